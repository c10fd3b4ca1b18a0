"""`python -m distill_sbs.eval --gin_file=... [--gin.NAME=value ...]`."""
from distill_sbs.training import gin_utils

main, console_entry_point = gin_utils.configurable_entry_point(
    'distill_sbs.training.inference.evaluate', '%EVAL_OUTPUT_DIR', 'config.eval.gin')

if __name__ == '__main__':
  console_entry_point()
