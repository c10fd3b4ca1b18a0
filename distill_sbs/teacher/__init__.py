"""distill_sbs.teacher."""
