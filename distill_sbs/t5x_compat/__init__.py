"""Launching this project's experiments with the real T5X (`python -m t5x.train`).

Importable only where T5X is installed (see docs/t5x.md); nothing else in the
project imports this package or T5X. The gin files in `t5x_configs/t5x/` import
it through gin (`from distill_sbs import t5x_compat`).

  SbsEncoderDecoderModel    exact α·L_label + (1−α)·L_rationale (paired converter)
  FirstEncoderDecoderModel  FIRST top-k KL with a calibrated teacher temperature
  ProjectLossEncoderDecoderModel
                            any project `LossFn` (baselines: CrossEntropyLoss)
  PairedFeatureConverter / TopKFeatureConverter
                            the project's converters behind T5X's
                            `FEATURE_CONVERTER_CLS(pack=..., use_custom_packing_ops=...)`
  SbsDecoderOnlyModel / ProjectLossDecoderOnlyModel
                            T5X `DecoderOnlyModel`s over `models.DecoderOnlyTransformer`
                            (step-by-step; any project `LossFn`), with the
                            DecoderOnly{,Paired,TopK}FeatureConverter rows
"""
try:
  import t5x.models  # pylint: disable=unused-import
except ImportError as e:  # pragma: no cover - exercised by tests without T5X
  raise ImportError(
      'distill_sbs.t5x_compat needs T5X, which is not installed (it is not on the '
      'package registry). Install T5X from its own repository next to this project '
      '(docs/t5x.md lists the verified commit and companion packages), or use the '
      "project's own trainer: `python -m distill_sbs.train`.") from e

from distill_sbs.t5x_compat.decoder_only import ProjectLossDecoderOnlyModel
from distill_sbs.t5x_compat.decoder_only import SbsDecoderOnlyModel
from distill_sbs.t5x_compat.feature_converters import DecoderOnlyFeatureConverter
from distill_sbs.t5x_compat.feature_converters import DecoderOnlyPairedFeatureConverter
from distill_sbs.t5x_compat.feature_converters import DecoderOnlyTopKFeatureConverter
from distill_sbs.t5x_compat.feature_converters import PairedFeatureConverter
from distill_sbs.t5x_compat.feature_converters import TopKFeatureConverter
from distill_sbs.t5x_compat.models import FirstEncoderDecoderModel
from distill_sbs.t5x_compat.models import ProjectLossEncoderDecoderModel
from distill_sbs.t5x_compat.models import SbsEncoderDecoderModel
from distill_sbs.t5x_compat.variables import unbox_with_axes

__all__ = [
    'DecoderOnlyFeatureConverter', 'DecoderOnlyPairedFeatureConverter',
    'DecoderOnlyTopKFeatureConverter', 'FirstEncoderDecoderModel', 'PairedFeatureConverter',
    'ProjectLossDecoderOnlyModel', 'ProjectLossEncoderDecoderModel', 'SbsDecoderOnlyModel',
    'SbsEncoderDecoderModel', 'TopKFeatureConverter', 'unbox_with_axes',
]
