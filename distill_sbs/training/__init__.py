"""distill_sbs.training."""
