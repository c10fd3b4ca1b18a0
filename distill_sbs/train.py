"""`python -m distill_sbs.train --gin_file=... [--gin.NAME=value ...]`."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import gin

from distill_sbs.training import gin_utils


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {argv[1:]}')
  gin_utils.parse_gin_flags()
  gin_utils.initialize_distributed_from_flags()
  from distill_sbs.training import train_loop  # pylint: disable=g-import-not-at-top
  model_dir = gin_utils.query_model_dir(
      '%MODEL_DIR', 'distill_sbs.training.train_loop.train.model_dir')
  if model_dir:
    _check_resume(model_dir)
    gin_utils.write_config(model_dir)
  gin.get_configurable(train_loop.train)()
  if model_dir:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      with open(os.path.join(model_dir, 'config.operative.gin'), 'w') as f:
        f.write(gin.operative_config_str())


def _check_resume(model_dir: str) -> None:
  """A run with checkpoints keeps its model shape (before config.gin is rewritten)."""
  from distill_sbs.training import config_checks  # pylint: disable=g-import-not-at-top
  recorded = os.path.join(model_dir, 'config.gin')
  ckpts = os.path.join(model_dir, 'checkpoints')
  if os.path.isfile(recorded) and os.path.isdir(ckpts) and any(
      n.isdigit() for n in os.listdir(ckpts)):
    config_checks.check_resume_config(recorded, gin.config_str())


def console_entry_point(argv: Optional[Sequence[str]] = None) -> None:
  gin_utils.run(main, argv)


if __name__ == '__main__':
  console_entry_point()
