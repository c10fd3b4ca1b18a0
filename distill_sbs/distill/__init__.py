"""distill_sbs.distill."""
