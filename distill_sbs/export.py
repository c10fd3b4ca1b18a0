"""`python -m distill_sbs.export`: a trained student → Hugging Face directory.

The directory (`config.json`, `model.safetensors`, and `spiece.model` when the
model's vocabulary is SentencePiece) loads with
`transformers.T5ForConditionalGeneration.from_pretrained` for serving.
Configured by a model gin plus `t5x_configs/runs/export.gin`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import gin

from distill_sbs.training import gin_utils


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {argv[1:]}')
  gin_utils.parse_gin_flags()
  from distill_sbs.training import export  # pylint: disable=g-import-not-at-top
  gin.get_configurable(export.export_hf)()


def console_entry_point(argv: Optional[Sequence[str]] = None) -> None:
  gin_utils.run(main, argv)


if __name__ == '__main__':
  console_entry_point()
