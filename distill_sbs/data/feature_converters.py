"""Encoder-decoder feature converters that pack best fit; the step-by-step one.

`EncDecFeatureConverter` is seqio's, packing with `data.packing.pack_dataset`
(several open rows, vector best fit) instead of seqio's in-order packer; it is the
project model's default converter, and the step-by-step and FIRST converters
build on it.

Distilling step-by-step trains on `sbs_{ds}_paired_{llm,gold}`, whose examples
carry a label pair (`inputs` 'predict: …' → `targets` label) and a rationale
pair (`rationale_inputs` 'explain: …' → `rationale_targets` rationale).
`PairedEncDecFeatureConverter` turns each example into two rows, tags every
target token with its task (`decoder_task_ids`: 0 label, 1 rationale) and,
like seqio's `EncDecFeatureConverter`, pads or packs them. The objective
α·L_label + (1−α)·L_rationale lives in one place, the loss
(`distill.losses.StepByStepLoss`, per-task token means over the batch), so the
rows may be packed freely: a packed row can hold the label and rationale
pieces of many examples.

Example (byte ids shortened; lengths inputs 8, targets 6), two examples:

  ex1: inputs [p, a, 1]  targets [L, 1]     rationale_inputs [e, a, 1]
       rationale_targets [r, s, 1]
  ex2: inputs [p, b, 1]  targets [M, 1]     rationale_inputs [e, b, 1]
       rationale_targets [t, 1]

Rows (label then rationale of each example):

  row1: inputs [p, a, 1]  targets [L, 1]     task_ids [0, 0]
  row2: inputs [e, a, 1]  targets [r, s, 1]  task_ids [1, 1, 1]
  row3: inputs [p, b, 1]  targets [M, 1]     task_ids [0, 0]
  row4: inputs [e, b, 1]  targets [t, 1]     task_ids [1, 1]

pack=False (each row padded):

  encoder_input_tokens  [[p, a, 1, 0, 0, 0, 0, 0], [e, a, 1, 0, …], …]   [4, 8]
  decoder_target_tokens [[L, 1, 0, 0, 0, 0], [r, s, 1, 0, 0, 0], …]    [4, 6]
  decoder_input_tokens  [[0, L, 0, 0, 0, 0], [0, r, s, 0, 0, 0], …]    [4, 6]
  decoder_loss_weights  [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], …]    [4, 6]
  decoder_task_ids      [[0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], …]    [4, 6]

pack=True (best-fit packing; here rows in order happen to fit):

  encoder_input_tokens  [[p, a, 1, e, a, 1, 0, 0], [p, b, 1, e, b, 1, 0, 0]]
  encoder_segment_ids   [[1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 2, 2, 2, 0, 0]]
  encoder_positions     [[0, 1, 2, 0, 1, 2, 0, 0], [0, 1, 2, 0, 1, 2, 0, 0]]
  decoder_target_tokens [[L, 1, r, s, 1, 0], [M, 1, t, 1, 0, 0]]
  decoder_input_tokens  [[0, L, 0, r, s, 0], [0, M, 0, t, 0, 0]]
  decoder_segment_ids   [[1, 1, 2, 2, 2, 0], [1, 1, 2, 2, 0, 0]]
  decoder_positions     [[0, 1, 0, 1, 2, 0], [0, 1, 0, 1, 0, 0]]
  decoder_loss_weights  [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]
  decoder_task_ids      [[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]]

Padding positions carry task id 0 but loss weight 0, so they count for no
task. A dataset without the `rationale_*` features (a label task at
evaluation) gives one label row per example.
"""
from __future__ import annotations

from typing import Mapping, Optional

import gin
import seqio
import tensorflow as tf

from distill_sbs.data import packing
from distill_sbs.distill import losses

RATIONALE_FEATURES = ('rationale_inputs', 'rationale_targets')
LABEL_TASK_ID = losses.LABEL_TASK_ID
RATIONALE_TASK_ID = losses.RATIONALE_TASK_ID
TASK_IDS = 'task_ids'  # the rows' per-target-token task feature before conversion


def _row(inputs: tf.Tensor, targets: tf.Tensor, task_id: int) -> dict[str, tf.Tensor]:
  targets = tf.cast(targets, tf.int32)
  return {'inputs': tf.cast(inputs, tf.int32), 'targets': targets,
          TASK_IDS: tf.fill(tf.shape(targets), tf.constant(task_id, tf.int32))}


class EncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """seqio's `EncDecFeatureConverter` with best-fit packing (`data.packing`).

  Same features, segment ids and positions as seqio's; rows are fuller.
  `num_bins` open rows are kept while packing (None: `data.packing`'s
  default). `encoder_block_length` n > 0 keeps each example's inputs inside
  one n-token block of the packed row (inputs trimmed to n), for a model that
  attends per block (`T5Config.encoder_block_length`; the input pipeline
  passes the model's):

    inputs 8, block 4:  [a a a 0 | b b c 0]   segment ids [1 1 1 0 | 2 2 3 0]
  """

  def __init__(self, pack: bool = True, num_bins: Optional[int] = None,
               encoder_block_length: int = 0, **kwargs):
    self.num_bins = num_bins  # None: packing's default (with or without blocks)
    self.encoder_block_length = int(encoder_block_length)
    super().__init__(pack=pack, **kwargs)

  def _pack_or_pad(self, ds: tf.data.Dataset, packed_lengths: Mapping[str, int]
                   ) -> tf.data.Dataset:
    if not self.pack:
      return super()._pack_or_pad(ds, packed_lengths)
    blocks = {'inputs': self.encoder_block_length} if self.encoder_block_length else None
    return packing.pack_dataset(ds, packed_lengths, self.num_bins, blocks)


@gin.configurable
class PairedEncDecFeatureConverter(EncDecFeatureConverter):
  """Label and rationale rows per example, padded or packed (module docstring)."""

  MODEL_FEATURES = {
      **seqio.EncDecFeatureConverter.MODEL_FEATURES,
      'decoder_task_ids': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }

  def __init__(self, pack: bool = False, **kwargs):
    super().__init__(pack=pack, **kwargs)

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    present = [f in ds.element_spec for f in RATIONALE_FEATURES]
    if any(present) and not all(present):
      raise ValueError(f'paired dataset needs both {RATIONALE_FEATURES}, has '
                       f'{sorted(ds.element_spec)}')
    paired = all(present)

    def rows(ex):
      label = tf.data.Dataset.from_tensors(_row(ex['inputs'], ex['targets'], LABEL_TASK_ID))
      if not paired:
        return label
      return label.concatenate(tf.data.Dataset.from_tensors(
          _row(ex['rationale_inputs'], ex['rationale_targets'], RATIONALE_TASK_ID)))

    ds = ds.flat_map(rows)
    lengths = {'inputs': int(task_feature_lengths['inputs']),
               'targets': int(task_feature_lengths['targets'])}
    ds = self._pack_or_pad(ds, {**lengths, TASK_IDS: lengths['targets']})
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    d['decoder_task_ids'] = features[TASK_IDS]
    return d

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(
        {k: task_feature_lengths[k] for k in ('inputs', 'targets')}))
    lengths['decoder_task_ids'] = lengths['decoder_target_tokens']
    return lengths
