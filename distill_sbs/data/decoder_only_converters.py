"""Decoder-only feature converters (T5X PrefixLM style, no start token).

Each row is one sequence `inputs ++ targets`. Hugging Face decoder-only
checkpoints have no shift-right start token, so the sequence is cut, not
shifted: `decoder_input_tokens` = seq[:-1] and `decoder_target_tokens` =
seq[1:] (the token at position i predicts the token at i + 1). The loss is on
the targets only: `decoder_loss_weights` is 1 exactly on the positions whose
target is a `targets` token (the first of them is the position of the last
input token). `decoder_segment_ids` (1.. per row, 0 on padding) and
`decoder_positions` (0.. per row) are ALWAYS emitted, packed or not: id 0 is a
real token in Hugging Face vocabularies, so no token value marks padding. The
padding value of every feature is 0 (not the vocabulary's pad id, which the
network never needs: segment ids mask attention and loss weights mask the
loss). With `prefix_lm=True`, `decoder_causal_attention` is 1 on the input
positions, i.e. every fed input token incl. the one predicting the first
target (T5X's "one additional position to the right" is that position here,
since nothing is shifted): the prefix attends bidirectionally.

Lengths: `task_feature_lengths` are T5X's {'inputs': Li, 'targets': Lt} (what
the run gins give every method); inputs are trimmed to Li and targets to Lt,
and every model feature is Li + Lt long (T5X's PrefixLMFeatureConverter sizes
its decoder the same way; a row uses at most Li + Lt - 1 of them).

Example (lengths inputs 3, targets 3 → model length 6), one example:

  inputs [p, a, E]   targets [L, E]        seq = [p, a, E, L, E] (5 tokens)

pack=False:

  decoder_input_tokens     [p, a, E, L, 0, 0]
  decoder_target_tokens    [a, E, L, E, 0, 0]
  decoder_loss_weights     [0, 0, 1, 1, 0, 0]   (targets L, E)
  decoder_segment_ids      [1, 1, 1, 1, 0, 0]
  decoder_positions        [0, 1, 2, 3, 0, 0]
  decoder_causal_attention [1, 1, 1, 0, 0, 0]   (prefix_lm=True only)

Paired step-by-step (`DecoderOnlyPairedFeatureConverter`): a label row
(inputs → targets) and a rationale row (rationale_inputs → rationale_targets)
per example, `decoder_task_ids` 0 / 1 on the row's target positions (0 on the
prefix and padding, where the loss weight is 0):

  ex: inputs [p, a, E]  targets [L, E]  rationale_inputs [e, a, E]
      rationale_targets [r, E]            (lengths inputs 4, targets 4 → 8)
  pack=True (best fit, `data.packing`; whole rows, here both in one):
  decoder_input_tokens  [p, a, E, L, e, a, E, r]
  decoder_target_tokens [a, E, L, E, a, E, r, E]
  decoder_loss_weights  [0, 0, 1, 1, 0, 0, 1, 1]
  decoder_task_ids      [0, 0, 0, 0, 0, 0, 1, 1]
  decoder_segment_ids   [1, 1, 1, 1, 2, 2, 2, 2]
  decoder_positions     [0, 1, 2, 3, 0, 1, 2, 3]

FIRST (`DecoderOnlyTopKFeatureConverter`): the teacher's top-k rows
`teacher_topk_{ids,logprobs}` [Lt, k] (one per target token, as
`data.topk.TopKFeatureConverter` emits them as `decoder_topk_*` on its
decoder) go to the positions that predict those tokens; other positions hold
0 (ids and log-probs, like the enc-dec converter's padding):

  targets [L, E] with rows [[l…], [e…]]  →  decoder_topk_ids
  [[0…], [0…], [l…], [e…], [0…], [0…]]

UL2R prefix-LM: `DecoderOnlyPrefixLMFeatureConverter` (the label converter
with prefix_lm=True; the UL2R tasks' inputs carry the mode token). The
rationale-as-output baseline is the label converter on the CoT task.

Model gins choose these through `DecoderOnlyModel.converter_for`
(`converter_for` below): a method gin names the encoder-decoder converter and
the decoder-only model maps it.
"""
from __future__ import annotations

from typing import Mapping, Optional

import gin
import seqio
import tensorflow as tf

from distill_sbs.data import feature_converters
from distill_sbs.data import packing

LABEL_TASK_ID = feature_converters.LABEL_TASK_ID
RATIONALE_TASK_ID = feature_converters.RATIONALE_TASK_ID
RATIONALE_FEATURES = feature_converters.RATIONALE_FEATURES
TOPK_TASK_FEATURES = ('teacher_topk_ids', 'teacher_topk_logprobs')

_Spec = seqio.FeatureConverter.FeatureSpec
_BASE_MODEL_FEATURES = {
    'decoder_target_tokens': _Spec(dtype=tf.int32),
    'decoder_input_tokens': _Spec(dtype=tf.int32),
    'decoder_loss_weights': _Spec(dtype=tf.int32),
    'decoder_segment_ids': _Spec(dtype=tf.int32),
    'decoder_positions': _Spec(dtype=tf.int32),
}


def decoder_only_row(inputs: tf.Tensor, targets: tf.Tensor, *, prefix_lm: bool = False,
                     task_id: Optional[int] = None, topk_ids: Optional[tf.Tensor] = None,
                     topk_logprobs: Optional[tf.Tensor] = None) -> dict[str, tf.Tensor]:
  """The unpadded model features of one `inputs ++ targets` row (n - 1 long,
  n = len(inputs) + len(targets)); see the module docstring."""
  inputs = tf.cast(inputs, tf.int32)
  targets = tf.cast(targets, tf.int32)
  m = tf.size(inputs)
  seq = tf.concat([inputs, targets], 0)
  n1 = tf.size(seq) - 1
  idx = tf.range(n1)
  is_target = idx >= m - 1
  row = {'decoder_input_tokens': seq[:-1], 'decoder_target_tokens': seq[1:],
         'decoder_loss_weights': tf.cast(is_target, tf.int32)}
  if prefix_lm:
    row['decoder_causal_attention'] = tf.cast(idx < m, tf.int32)
  if task_id is not None:
    row['decoder_task_ids'] = tf.where(is_target, task_id, 0)
  if topk_ids is not None:
    # Position m - 1 + j predicts target j; with no inputs, target 0 is never
    # predicted (it is the first fed token).
    lead = tf.maximum(m - 1, 0)
    start = tf.maximum(1 - m, 0)
    for name, rows in (('decoder_topk_ids', tf.cast(topk_ids, tf.int32)),
                       ('decoder_topk_logprobs', tf.cast(topk_logprobs, tf.float32))):
      pad = tf.zeros(tf.stack([lead, tf.shape(rows)[1]]), rows.dtype)
      row[name] = tf.concat([pad, rows[start:]], 0)
  return row


@gin.configurable(module='distill_sbs.data.decoder_only_converters')
class DecoderOnlyFeatureConverter(seqio.FeatureConverter):
  """Label rows `inputs ++ targets` for a decoder-only model (module docstring).

  Args:
    pack: best-fit packing (`data.packing`, `num_bins` open rows) of whole
      rows; else each row is padded to the model length.
    prefix_lm: emit `decoder_causal_attention` (bidirectional prefix).
  """

  TASK_FEATURES = {'inputs': _Spec(dtype=tf.int32), 'targets': _Spec(dtype=tf.int32)}
  MODEL_FEATURES = dict(_BASE_MODEL_FEATURES)
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = True, prefix_lm: bool = False,
               num_bins: int = packing.DEFAULT_NUM_BINS, **kwargs):
    self.prefix_lm = bool(prefix_lm)
    self.num_bins = int(num_bins)
    super().__init__(pack=pack, **kwargs)

  # seqio's __call__ validates against fixed rank-1 features; the features
  # here depend on the data (paired, top-k) and flags, so the checks are ours.
  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
               ) -> tf.data.Dataset:
    missing = [k for k in ('inputs', 'targets') if k not in task_feature_lengths]
    if missing:
      raise ValueError(f'{type(self).__name__}: task_feature_lengths '
                       f'{sorted(task_feature_lengths)} needs {missing}')
    absent = [k for k in ('inputs', 'targets') if k not in ds.element_spec]
    if absent:
      raise ValueError(f'{type(self).__name__}: the dataset has no {absent} '
                       f'(has {sorted(ds.element_spec)})')
    lengths = {k: int(task_feature_lengths[k]) for k in ('inputs', 'targets')}
    return self._convert_features(ds, lengths)

  # ------------------------------------------------------------------ rows
  def _rows(self, ds: tf.data.Dataset, lengths: Mapping[str, int]) -> tf.data.Dataset:
    """Unpadded model-feature rows (trimmed to the task lengths)."""
    li, lt = lengths['inputs'], lengths['targets']
    return ds.map(lambda ex: decoder_only_row(ex['inputs'][:li], ex['targets'][:lt],
                                              prefix_lm=self.prefix_lm),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    length = self.model_length(task_feature_lengths)
    rows = self._rows(ds, task_feature_lengths)
    keys = list(rows.element_spec)
    if self.pack:
      # (An example of < 2 tokens has no row; unpacked, it pads to an all-zero
      # row, so one-row-per-example datasets keep their cardinality.)
      rows = rows.filter(lambda r: tf.size(r['decoder_input_tokens']) > 0)
      packed = packing.pack_dataset(rows, {k: length for k in keys}, self.num_bins)

      def name(ex):
        out = {k: ex[k] for k in keys}
        out['decoder_segment_ids'] = ex['decoder_input_tokens_segment_ids']
        out['decoder_positions'] = ex['decoder_input_tokens_positions']
        return out
      return packed.map(name, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def pad(ex):
      n = tf.shape(ex['decoder_input_tokens'])[0]
      out = dict(ex)
      out['decoder_segment_ids'] = tf.ones([n], tf.int32)
      out['decoder_positions'] = tf.range(n, dtype=tf.int32)
      for k, v in out.items():
        v = v[:length]
        v = tf.pad(v, [[0, length - tf.shape(v)[0]]] + [[0, 0]] * (v.shape.rank - 1))
        out[k] = tf.ensure_shape(v, [length] + v.shape.as_list()[1:])
      return out
    return rows.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  @staticmethod
  def model_length(task_feature_lengths: Mapping[str, int]) -> int:
    """Every model feature's length: inputs + targets lengths."""
    return int(task_feature_lengths['inputs']) + int(task_feature_lengths['targets'])

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    n = self.model_length(task_feature_lengths)
    names = list(_BASE_MODEL_FEATURES) + (['decoder_causal_attention'] if self.prefix_lm
                                          else []) + list(self._extra_features())
    return {k: n for k in names}

  def _extra_features(self) -> tuple[str, ...]:
    return ()


@gin.configurable(module='distill_sbs.data.decoder_only_converters')
class DecoderOnlyPrefixLMFeatureConverter(DecoderOnlyFeatureConverter):
  """The label converter with a bidirectional prefix (UL2R, T5X's PrefixLM)."""

  def __init__(self, pack: bool = True, prefix_lm: bool = True, **kwargs):
    super().__init__(pack=pack, prefix_lm=prefix_lm, **kwargs)


@gin.configurable(module='distill_sbs.data.decoder_only_converters')
class DecoderOnlyPairedFeatureConverter(DecoderOnlyFeatureConverter):
  """Label and rationale rows per example with `decoder_task_ids` (module
  docstring); a dataset without `rationale_*` gives label rows only."""

  def __init__(self, pack: bool = False, **kwargs):
    super().__init__(pack=pack, **kwargs)

  def _rows(self, ds, lengths):
    present = [f in ds.element_spec for f in RATIONALE_FEATURES]
    if any(present) and not all(present):
      raise ValueError(f'paired dataset needs both {RATIONALE_FEATURES}, has '
                       f'{sorted(ds.element_spec)}')
    paired = all(present)
    li, lt = lengths['inputs'], lengths['targets']

    def rows(ex):
      label = tf.data.Dataset.from_tensors(decoder_only_row(
          ex['inputs'][:li], ex['targets'][:lt], prefix_lm=self.prefix_lm,
          task_id=LABEL_TASK_ID))
      if not paired:
        return label
      return label.concatenate(tf.data.Dataset.from_tensors(decoder_only_row(
          ex['rationale_inputs'][:li], ex['rationale_targets'][:lt],
          prefix_lm=self.prefix_lm, task_id=RATIONALE_TASK_ID)))
    return ds.flat_map(rows)

  def _extra_features(self):
    return ('decoder_task_ids',)


@gin.configurable(module='distill_sbs.data.decoder_only_converters')
class DecoderOnlyTopKFeatureConverter(DecoderOnlyFeatureConverter):
  """Label rows + the teacher's top-k on the target positions (FIRST; module
  docstring); a dataset without the top-k features gives plain label rows."""

  def __init__(self, pack: bool = False, **kwargs):
    super().__init__(pack=pack, **kwargs)

  def _rows(self, ds, lengths):
    if not all(f in ds.element_spec for f in TOPK_TASK_FEATURES):
      return super()._rows(ds, lengths)
    li, lt = lengths['inputs'], lengths['targets']
    return ds.map(lambda ex: decoder_only_row(
        ex['inputs'][:li], ex['targets'][:lt], prefix_lm=self.prefix_lm,
        topk_ids=ex['teacher_topk_ids'][:lt], topk_logprobs=ex['teacher_topk_logprobs'][:lt]),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def _extra_features(self):
    return ('decoder_topk_ids', 'decoder_topk_logprobs')


def converter_for(cls: Optional[type]) -> type:
  """The decoder-only converter matching a method's (encoder-decoder) one:
  EncDec / seqio's EncDec → `DecoderOnlyFeatureConverter`, paired →
  `DecoderOnlyPairedFeatureConverter`, FIRST top-k →
  `DecoderOnlyTopKFeatureConverter`; decoder-only classes map to themselves,
  None to the label converter. Anything else raises (no silent fallback)."""
  from distill_sbs.data import topk  # pylint: disable=g-import-not-at-top
  if cls is None:
    return DecoderOnlyFeatureConverter
  if isinstance(cls, type) and issubclass(cls, DecoderOnlyFeatureConverter):
    return cls
  for enc_dec, dec_only in ((topk.TopKFeatureConverter, DecoderOnlyTopKFeatureConverter),
                            (feature_converters.PairedEncDecFeatureConverter,
                             DecoderOnlyPairedFeatureConverter),
                            (seqio.EncDecFeatureConverter, DecoderOnlyFeatureConverter)):
    if isinstance(cls, type) and issubclass(cls, enc_dec):
      return dec_only
  raise ValueError(f'no decoder-only feature converter for {cls!r}; bind '
                   'input_pipeline.DatasetConfig.feature_converter_cls to one of '
                   'distill_sbs.data.decoder_only_converters')
