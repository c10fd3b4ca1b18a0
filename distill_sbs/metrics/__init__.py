"""distill_sbs.metrics."""
