"""distill_sbs.models."""
