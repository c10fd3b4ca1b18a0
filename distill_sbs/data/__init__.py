"""distill_sbs.data."""
