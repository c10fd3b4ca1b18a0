"""A pretrained student for the demo: a Hugging Face T5 v1.1 / Flan-T5 directory.

`student_gin` writes a run gin file that includes the demo's gin file and
re-binds `models.T5Config` to the checkpoint's shape (from its `config.json`)
and `VOCAB_SIZE` to its vocabulary; the demo binds `INITIAL_CHECKPOINT_PATH`
to the directory, so both methods start from the same pretrained weights and
read text with the checkpoint's own SentencePiece model (`spiece.model`).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

# T5Config fields the checkpoint decides (dtypes, dropout and remat stay the
# run's choice).
SHAPE_FIELDS = ('emb_dim', 'num_heads', 'head_dim', 'num_encoder_layers',
                'num_decoder_layers', 'mlp_dim', 'mlp_activations',
                'logits_via_embedding', 'relative_attention_num_buckets',
                'relative_attention_max_distance', 'layer_norm_epsilon')
VOCAB_FILE = 'spiece.model'


@dataclasses.dataclass(frozen=True)
class PretrainedStudent:
  """What the demo needs from a checkpoint directory."""
  path: pathlib.Path        # the Hugging Face directory
  vocab_model: pathlib.Path  # its SentencePiece model
  config: Any                # models.T5Config read from config.json + tensors


def load(path: str) -> PretrainedStudent:
  """Reads `path` (config.json + safetensors + spiece.model); clear errors."""
  from distill_sbs.data import vocab  # pylint: disable=g-import-not-at-top
  from distill_sbs.models import hf_io  # pylint: disable=g-import-not-at-top
  d = pathlib.Path(path).expanduser().resolve()
  if not d.is_dir():
    raise FileNotFoundError(f'--pretrained {d}: not a directory (expected a Hugging Face '
                            'T5 v1.1 / Flan-T5 directory: config.json, model.safetensors, '
                            f'{VOCAB_FILE})')
  spm = d / VOCAB_FILE
  if not spm.exists():
    raise FileNotFoundError(f'--pretrained {d}: no {VOCAB_FILE} (the checkpoint\'s '
                            'SentencePiece vocabulary; copy it from the model\'s release)')
  config, _ = hf_io.load_hf_checkpoint(str(d))
  pieces = int(vocab.get_vocabulary(str(spm)).vocab_size)
  if pieces > config.vocab_size:
    raise ValueError(f'--pretrained {d}: {spm} has {pieces} ids (with extra ids) but '
                     f'config.json vocab_size is {config.vocab_size}')
  return PretrainedStudent(d, spm, config)


def student_gin(student: PretrainedStudent, out: pathlib.Path) -> pathlib.Path:
  """Writes `out`, the checkpoint's shape and vocabulary size as gin (added
  after the demo's student gin, so it overrides its shape); returns its path."""
  cfg = student.config
  lines = [
      f'# Written by distill_sbs.experiments.demo for --pretrained={student.path}:',
      '# the model shape of its config.json.',
      'from __gin__ import dynamic_registration', '',
      'from distill_sbs import models', '',
      f'VOCAB_SIZE = {cfg.vocab_size}', '',
      'models.T5Config:',
      # repr is a gin literal for these ints, floats, bools and string tuples.
      *(f'  {f} = {getattr(cfg, f)!r}' for f in SHAPE_FIELDS), '']
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text('\n'.join(lines))
  return out
