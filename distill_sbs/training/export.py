"""Export a trained student as a Hugging Face `T5ForConditionalGeneration` directory."""
from __future__ import annotations

import os
import shutil
from typing import Any

import gin


@gin.configurable(module='distill_sbs.training.export')
def export_hf(*, model: Any, checkpoint_path: str, output_dir: str) -> str:
  """Writes the checkpoint's parameters with the model's `T5Config`."""
  from distill_sbs import models  # pylint: disable=g-import-not-at-top
  from distill_sbs.models import checkpoint_formats  # pylint: disable=g-import-not-at-top
  config = model.module.config
  from distill_sbs.training import checkpoints  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import trainer  # pylint: disable=g-import-not-at-top
  checkpoints.require_checkpoint(checkpoint_path)
  params = checkpoint_formats.read_params(checkpoint_path)
  bad = trainer.nonfinite_leaves(params)
  if bad:
    raise FloatingPointError(
        f'refusing to export {checkpoint_path}: non-finite values in '
        f'{", ".join(bad[:8])}{" ..." if len(bad) > 8 else ""}')
  models.save_hf_checkpoint(output_dir, config, params)
  vocabulary = model.output_vocabulary
  vocabulary = getattr(vocabulary, 'resolved', vocabulary)  # LazyVocabulary
  spm = getattr(vocabulary, 'sentencepiece_model_file', None)
  if spm:
    shutil.copyfile(spm, os.path.join(output_dir, 'spiece.model'))
  print(f'exported {checkpoint_path} to {output_dir}'
        + (' (with spiece.model)' if spm else ' (byte vocabulary: no spiece.model)'))
  return output_dir
