"""The project's feature converters as T5X `FEATURE_CONVERTER_CLS`es.

T5X builds the converter as `FEATURE_CONVERTER_CLS(pack=cfg.pack,
use_custom_packing_ops=cfg.use_custom_packing_ops)` for every `DatasetConfig`
(train, train_eval, infer_eval). These subclasses keep the project's conversion
exactly (same model features, same α weights and task ids, same top-k rows)
and only turn T5X's default `pack=True` into an error that names the gin
binding to change.

  PairedFeatureConverter  paired label + rationale rows: `decoder_loss_weights`
                          α / 1−α, `decoder_task_ids` 0 / 1 [batch, length];
                          α defaults to `mixture_alpha()` (gin), the α of the
                          `sbs_{ds}_{gold,llm}` mixtures; rows have static
                          lengths (the project's converter sets them; T5X
                          sizes the model from `element_spec`).
  TopKFeatureConverter    + `decoder_topk_ids` / `decoder_topk_logprobs`
                          [batch, length, k] (FIRST).
"""
from __future__ import annotations

from typing import Optional

from distill_sbs.data import feature_converters as data_converters
from distill_sbs.data import topk as data_topk

_PACK_HINT = ('{cls} cannot pack examples; in the T5X gin file set '
              '`train/utils.DatasetConfig.pack = False` and '
              '`train_eval/utils.DatasetConfig.pack = False` (the files in '
              't5x_configs/t5x/ do)')


def _check_pack(cls_name: str, pack: bool) -> None:
  if pack:
    raise ValueError(_PACK_HINT.format(cls=cls_name))


class PairedFeatureConverter(data_converters.PairedEncDecFeatureConverter):
  """`PairedEncDecFeatureConverter` with T5X's constructor arguments."""

  def __init__(self, pack: bool = False, use_custom_packing_ops: bool = False,
               alpha: Optional[float] = None, **kwargs):
    _check_pack(type(self).__name__, pack)
    if alpha is None:
      from distill_sbs.tasks import sbs  # pylint: disable=g-import-not-at-top
      alpha = sbs.mixture_alpha()
    super().__init__(alpha=alpha, pack=False,
                     use_custom_packing_ops=use_custom_packing_ops, **kwargs)


class TopKFeatureConverter(data_topk.TopKFeatureConverter):
  """`data.topk.TopKFeatureConverter` with T5X's constructor arguments."""

  def __init__(self, pack: bool = False, use_custom_packing_ops: bool = False,
               **kwargs):
    _check_pack(type(self).__name__, pack)
    super().__init__(pack=False, use_custom_packing_ops=use_custom_packing_ops, **kwargs)
