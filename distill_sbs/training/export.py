"""Export a trained student as a Hugging Face directory: `T5ForConditionalGeneration`
(with `spiece.model` for a SentencePiece vocabulary), or a decoder-only causal LM
(llama / qwen2 / qwen3 / gemma3_text, with the `tokenizer.json` and tokenizer /
generation configs of an `HfTokenizerVocabulary`)."""
from __future__ import annotations

import os
import shutil
from typing import Any

import gin


# The tokenizer files of a Hugging Face checkpoint copied beside the export
# (config.json is the exported model's own).
HF_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                      'generation_config.json', 'chat_template.jinja')


@gin.configurable(module='distill_sbs.training.export')
def export_hf(*, model: Any, checkpoint_path: str, output_dir: str) -> str:
  """Writes the checkpoint's parameters with the model's config (`T5Config` or
  `DecoderOnlyConfig`) and the vocabulary's files."""
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
  tokenizer_file = getattr(vocabulary, 'tokenizer_file', None)  # HfTokenizerVocabulary
  if spm:
    shutil.copyfile(spm, os.path.join(output_dir, 'spiece.model'))
    note = ' (with spiece.model)'
  elif tokenizer_file:
    copied = []
    src = os.path.dirname(tokenizer_file)
    for name in HF_TOKENIZER_FILES:
      path = tokenizer_file if name == 'tokenizer.json' else os.path.join(src, name)
      if os.path.isfile(path):
        shutil.copyfile(path, os.path.join(output_dir, name))
        copied.append(name)
    note = f' (with {", ".join(copied)})'
  else:
    note = ' (byte vocabulary: no tokenizer files)'
  print(f'exported {checkpoint_path} to {output_dir}{note}')
  return output_dir
