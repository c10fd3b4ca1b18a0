"""distill_sbs.experiments."""
