"""`python -m distill_sbs.infer --gin_file=... [--gin.NAME=value ...]`."""
from distill_sbs.training import gin_utils

main, console_entry_point = gin_utils.configurable_entry_point(
    'distill_sbs.training.inference.infer', '%INFER_OUTPUT_DIR', 'config.infer.gin')

if __name__ == '__main__':
  console_entry_point()
