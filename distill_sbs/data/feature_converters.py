"""Paired α-weighted encoder-decoder feature converter (exact step-by-step loss).

Two ways to train label + rationale (the trainer's gin files choose):
  * mixture (rate approximation): `MIXTURE_OR_TASK_NAME = 'sbs_{ds}_llm'` with
    seqio's `EncDecFeatureConverter`; examples of the two tasks are sampled at
    rates α / 1−α and one loss is averaged over all tokens.
  * paired (exact): `MIXTURE_OR_TASK_NAME = 'sbs_{ds}_paired_llm'` with
    `PairedEncDecFeatureConverter` (`.alpha` in gin) and
    `CrossEntropyLoss.loss_normalizing_factor = 'PER_TASK_TOKENS'`: every
    example yields two adjacent rows (label row, then rationale row), so with an
    even batch size both targets of an example share a batch, and the loss is
    α·mean_label_tokens + (1−α)·mean_rationale_tokens over the batch, the
    paper's L = α·L_label + (1−α)·L_rationale.

Model features (T5X names), per row:
  encoder_input_tokens  [inputs_len]   int32
  decoder_target_tokens [targets_len]  int32
  decoder_input_tokens  [targets_len]  int32 (targets shifted right, bos 0)
  decoder_loss_weights  [targets_len]  float32: α on label-row tokens, 1−α on
                                       rationale-row tokens, 0 on padding
  decoder_task_ids      [targets_len]  int32: 0 label row, 1 rationale row
Both rows use the `inputs` / `targets` lengths of `task_feature_lengths` (the
same keys as T5X's TASK_FEATURE_LENGTHS) as static shapes in `element_spec`;
rationale features are trimmed to them. A dataset without `rationale_*`
features (e.g. a label task at eval) gives one label row per example with
weight 1. Packing is not supported.
"""
from __future__ import annotations

from typing import Mapping, Optional

import gin
import seqio
import tensorflow as tf

RATIONALE_FEATURES = ('rationale_inputs', 'rationale_targets')
LABEL_TASK_ID = 0
RATIONALE_TASK_ID = 1


def _fit(x: tf.Tensor, length: int) -> tf.Tensor:
  """Trims / zero-pads a 1-D int tensor to `length` (static shape [length]:
  T5X sizes the model from the dataset's `element_spec`)."""
  x = tf.cast(x[:length], tf.int32)
  return tf.ensure_shape(tf.pad(x, [[0, length - tf.shape(x)[0]]]), [length])


def _shift_right(targets: tf.Tensor, bos_id: int) -> tf.Tensor:
  """[rows, length] -> decoder inputs (bos then targets[:-1])."""
  bos = tf.fill([tf.shape(targets)[0], 1], tf.cast(bos_id, targets.dtype))
  return tf.concat([bos, targets[:, :-1]], axis=1)


@gin.configurable
class PairedEncDecFeatureConverter(seqio.FeatureConverter):
  """Emits a label row and a rationale row per example (see module docstring)."""

  TASK_FEATURES = {
      'inputs': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      'targets': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      'encoder_input_tokens': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      'decoder_target_tokens': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      'decoder_input_tokens': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      'decoder_loss_weights': seqio.FeatureConverter.FeatureSpec(dtype=tf.float32),
      'decoder_task_ids': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, alpha: float = 0.5, pack: bool = False,
               use_custom_packing_ops: bool = False,
               apply_length_check: bool = True, bos_id: int = 0,
               passthrough_features: Optional[Mapping[str, seqio.FeatureConverter
                                                      .FeatureSpec]] = None):
    if not 0.0 <= alpha <= 1.0:
      raise ValueError(f'PairedEncDecFeatureConverter.alpha must be in [0, 1], '
                       f'got {alpha}')
    if pack:
      raise ValueError('PairedEncDecFeatureConverter does not pack (each example '
                       'must give two aligned rows); set pack=False (T5X: '
                       'train/DatasetConfig.pack = False)')
    if passthrough_features:
      raise ValueError('PairedEncDecFeatureConverter has no passthrough features')
    self.alpha = float(alpha)
    super().__init__(pack=False, use_custom_packing_ops=use_custom_packing_ops,
                     apply_length_check=apply_length_check, bos_id=bos_id)

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    enc_len = int(task_feature_lengths['inputs'])
    dec_len = int(task_feature_lengths['targets'])
    present = [f in ds.element_spec for f in RATIONALE_FEATURES]
    if any(present) and not all(present):
      raise ValueError(f'paired dataset needs both {RATIONALE_FEATURES}, has '
                       f'{sorted(ds.element_spec)}')
    paired = all(present)
    alpha, bos_id = self.alpha, self.bos_id

    def convert(ex):
      if paired:
        enc = tf.stack([_fit(ex['inputs'], enc_len),
                        _fit(ex['rationale_inputs'], enc_len)])     # [2, enc_len]
        tgt = tf.stack([_fit(ex['targets'], dec_len),
                        _fit(ex['rationale_targets'], dec_len)])    # [2, dec_len]
        task_w = tf.constant([[alpha], [1.0 - alpha]], tf.float32)  # [2, 1]
        task_ids = tf.constant([[LABEL_TASK_ID], [RATIONALE_TASK_ID]], tf.int32)
      else:
        enc = _fit(ex['inputs'], enc_len)[None]                     # [1, enc_len]
        tgt = _fit(ex['targets'], dec_len)[None]                    # [1, dec_len]
        task_w = tf.ones([1, 1], tf.float32)
        task_ids = tf.zeros([1, 1], tf.int32)
      real = tf.cast(tgt > 0, tf.float32)
      return {
          'encoder_input_tokens': enc,
          'decoder_target_tokens': tgt,
          'decoder_input_tokens': _shift_right(tgt, bos_id),
          'decoder_loss_weights': real * task_w,
          'decoder_task_ids': tf.broadcast_to(task_ids, tf.shape(tgt)),
      }

    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.unbatch()

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    enc_len = task_feature_lengths['inputs']
    dec_len = task_feature_lengths['targets']
    return {'encoder_input_tokens': enc_len, 'decoder_target_tokens': dec_len,
            'decoder_input_tokens': dec_len, 'decoder_loss_weights': dec_len,
            'decoder_task_ids': dec_len}
