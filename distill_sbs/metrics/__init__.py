"""distill_sbs.metrics: label accuracy, SVAMP evaluator (calibration in calibration.py)."""
