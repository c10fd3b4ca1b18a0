"""`python -m distill_sbs.infer --gin_file=... [--gin.NAME=value ...]`."""
from __future__ import annotations

from typing import Optional, Sequence

import gin

from distill_sbs.training import gin_utils


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {argv[1:]}')
  gin_utils.parse_gin_flags()
  gin_utils.initialize_distributed_from_flags()
  from distill_sbs.training import inference  # pylint: disable=g-import-not-at-top
  out_dir = gin_utils.query_model_dir('%INFER_OUTPUT_DIR')
  if out_dir:
    gin_utils.write_config(out_dir, 'config.infer.gin')
  gin.get_configurable(inference.infer)()


def console_entry_point(argv: Optional[Sequence[str]] = None) -> None:
  gin_utils.run(main, argv)


if __name__ == '__main__':
  console_entry_point()
