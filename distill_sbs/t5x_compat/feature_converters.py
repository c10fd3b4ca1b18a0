"""The project's feature converters as T5X `FEATURE_CONVERTER_CLS`es.

T5X builds the converter as `FEATURE_CONVERTER_CLS(pack=cfg.pack,
use_custom_packing_ops=cfg.use_custom_packing_ops)` for every `DatasetConfig`
(train, train_eval, infer_eval). These are the project's converters under
T5X's names; both pack (T5X's default) or pad.

  PairedFeatureConverter  label + rationale rows, `decoder_task_ids` 0 / 1
                          [batch, length], 0/1 loss weights; the α of the
                          objective is the loss's (`losses.StepByStepLoss`).
  TopKFeatureConverter    + `decoder_topk_ids` / `decoder_topk_logprobs`
                          [batch, length, k] (FIRST).

Decoder-only students (`t5x_compat.decoder_only`): the converters of
`data.decoder_only_converters` (rows `inputs ++ targets`, not shifted; model
length inputs + targets; segment ids always present):

  DecoderOnlyFeatureConverter        label rows
  DecoderOnlyPairedFeatureConverter  label + rationale rows, `decoder_task_ids`
  DecoderOnlyTopKFeatureConverter    + the teacher's top-k on the target positions
"""
from __future__ import annotations

import tensorflow as tf

from distill_sbs.data import decoder_only_converters as data_decoder_only
from distill_sbs.data import feature_converters as data_converters
from distill_sbs.data import topk as data_topk


class _OneRowPerExample:
  """T5X's inference evaluation reads `len(ds)`: unpacked label rows (one per
  example) keep the input dataset's cardinality, which the data layer's
  filter / flat_map / packing leave unknown."""

  def __call__(self, ds, task_feature_lengths):
    out = super().__call__(ds, task_feature_lengths)
    n = int(ds.cardinality())
    paired = any(f in ds.element_spec for f in data_converters.RATIONALE_FEATURES)
    if not self.pack and not paired and n >= 0:
      out = out.apply(tf.data.experimental.assert_cardinality(n))
    return out


class PairedFeatureConverter(_OneRowPerExample, data_converters.PairedEncDecFeatureConverter):
  """`PairedEncDecFeatureConverter` (T5X constructs it with T5X's arguments)."""


class TopKFeatureConverter(_OneRowPerExample, data_topk.TopKFeatureConverter):
  """`data.topk.TopKFeatureConverter` (T5X constructs it with T5X's arguments)."""


class DecoderOnlyFeatureConverter(_OneRowPerExample,
                                  data_decoder_only.DecoderOnlyFeatureConverter):
  """`data.decoder_only_converters.DecoderOnlyFeatureConverter` (T5X's arguments)."""


class DecoderOnlyPairedFeatureConverter(_OneRowPerExample,
                                        data_decoder_only.DecoderOnlyPairedFeatureConverter):
  """`data.decoder_only_converters.DecoderOnlyPairedFeatureConverter` (T5X's arguments)."""


class DecoderOnlyTopKFeatureConverter(_OneRowPerExample,
                                      data_decoder_only.DecoderOnlyTopKFeatureConverter):
  """`data.decoder_only_converters.DecoderOnlyTopKFeatureConverter` (T5X's arguments)."""
