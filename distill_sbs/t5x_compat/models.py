"""T5X `EncoderDecoderModel`s whose training loss is one of the project's losses.

The network (`distill_sbs.models.Transformer`) is wrapped by T5X unchanged: it
already has T5X's `__call__` / `encode` / `decode` interface and `cache`
collection, so T5X's decoding (beam search, temperature sampling), scoring and
evaluation run as for T5X's own network. Two things differ from T5X's stock
model:

* `loss_fn` calls a `distill_sbs.distill.losses.LossFn` — the very function the
  project's trainer uses — on the logits and the whole batch, so extra batch
  features (`decoder_task_ids`, `decoder_topk_ids`, `decoder_topk_logprobs`)
  reach it;
* `get_initial_variables` turns the network's boxed parameters into T5X's
  `params` + `params_axes` layout (same tree, see `variables.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Union

from clu import metrics as clu_metrics
import jax
import jax.numpy as jnp
import seqio
from t5x import decoding
from t5x import metrics as metrics_lib
from t5x import models as t5x_models

from distill_sbs.distill import losses
from distill_sbs.t5x_compat import feature_converters
from distill_sbs.t5x_compat import variables as variables_lib

Array = jnp.ndarray
Batch = Mapping[str, Array]


class ProjectLossEncoderDecoderModel(t5x_models.EncoderDecoderModel):
  """T5X's encoder-decoder model trained with a project `LossFn`.

  Args (beyond T5X's `EncoderDecoderModel`):
    loss_fn: `(logits, batch) -> (scalar loss, metrics dict)`; default
      `losses.CrossEntropyLoss(label_smoothing, z_loss, loss_normalizing_factor)`.
      When given, `label_smoothing` / `z_loss` / `loss_normalizing_factor` are
      those of `loss_fn` (the three arguments are then ignored).
    loss_normalizing_factor: a number, None, or one of `losses.NORMALIZERS`.
  """

  def __init__(self, module, input_vocabulary: seqio.Vocabulary,
               output_vocabulary: seqio.Vocabulary, optimizer_def,
               decode_fn: t5x_models.DecodeFnCallable = decoding.beam_search,
               feature_converter_cls: Optional[Callable[..., seqio.FeatureConverter]] = None,
               label_smoothing: float = 0.0, z_loss: float = 1e-4,
               loss_normalizing_factor: Union[None, float, str] = losses.NUM_REAL_TARGET_TOKENS,
               default_decoder_params: Optional[t5x_models.DecoderParams] = None,
               loss_fn: Optional[losses.LossFn] = None):
    block = getattr(getattr(module, 'config', None), 'encoder_block_length', 0)
    if block:
      # T5X builds its converters as FEATURE_CONVERTER_CLS(pack, use_custom_packing_ops):
      # they would pack whole rows, and attention per block would cut segments.
      raise ValueError(f'T5Config.encoder_block_length={block}: T5X launches pack whole '
                       f'rows; set models.T5Config.encoder_block_length = 0 (the '
                       f"project's trainer, python -m distill_sbs.train, packs in blocks)")
    super().__init__(module=module, input_vocabulary=input_vocabulary,
                     output_vocabulary=output_vocabulary, optimizer_def=optimizer_def,
                     decode_fn=decode_fn, feature_converter_cls=feature_converter_cls,
                     label_smoothing=label_smoothing, z_loss=z_loss,
                     loss_normalizing_factor=None,
                     default_decoder_params=default_decoder_params)
    if isinstance(loss_normalizing_factor, str) and (
        loss_normalizing_factor not in losses.NORMALIZERS):
      raise ValueError(f'{type(self).__name__}.loss_normalizing_factor: unknown '
                       f'{loss_normalizing_factor!r}; use a number, None or one of '
                       f'{losses.NORMALIZERS}')
    self._loss_normalizing_factor = loss_normalizing_factor
    self._project_loss_fn = (loss_fn if loss_fn is not None else
                             self._default_loss_fn(label_smoothing, z_loss,
                                                   loss_normalizing_factor))

  def _default_loss_fn(self, label_smoothing, z_loss, loss_normalizing_factor
                       ) -> losses.LossFn:
    return losses.CrossEntropyLoss(label_smoothing=label_smoothing, z_loss=z_loss,
                                   loss_normalizing_factor=loss_normalizing_factor)

  @property
  def project_loss_fn(self) -> losses.LossFn:
    return self._project_loss_fn

  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Any],
                            input_types: Optional[Mapping[str, Any]] = None) -> Any:
    """T5X's initial variables with `params` unboxed and `params_axes` added."""
    boxed = super().get_initial_variables(rng, input_shapes, input_types)
    import flax.core  # pylint: disable=g-import-not-at-top
    return flax.core.freeze(variables_lib.unbox_with_axes(boxed))

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[jax.Array]):
    """(scalar loss, T5X metrics) with the project's loss on the whole batch."""
    logits = self._compute_logits(params, batch, dropout_rng)
    loss, aux = self._project_loss_fn(logits, batch)
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights')
    mask = (targets > 0) if weights is None else (weights > 0)  # [batch, length]
    segment_ids = {k[:-len('_segment_ids')]: v for k, v in batch.items()
                   if k.endswith('_segment_ids')}
    if not segment_ids:
      segment_ids = {k: v != 0 for k, v in batch.items()
                     if k in ('encoder_input_tokens', 'decoder_target_tokens')}
    z_loss = aux.get('z_loss')
    metrics = self._compute_metrics(logits=logits, targets=targets, mask=mask, loss=loss,
                                    z_loss=z_loss, segment_ids=segment_ids)
    for name, value in aux.items():
      if name not in ('loss', 'z_loss'):
        metrics[f'distill_sbs/{name}'] = metrics_lib.AveragePerStep(total=value)
    metrics.update(self._extra_metrics(logits, batch))
    return loss, metrics

  def _extra_metrics(self, logits: Array, batch: Batch) -> dict[str, Any]:
    del logits, batch
    return {}


class SbsEncoderDecoderModel(ProjectLossEncoderDecoderModel):
  """Distilling step-by-step: the exact α·L_label + (1−α)·L_rationale objective.

  The paired converter (`PairedFeatureConverter`) tags each target token with
  `decoder_task_ids` (0 label, 1 rationale); the loss is
  `losses.StepByStepLoss` (gin: `loss_fn = %LOSS_FN`, α its `alpha`; default
  `StepByStepLoss()`), per-task token means over the batch weighted α and
  1−α. Logs `label_loss` / `rationale_loss` (per-token CE of each task).
  """

  FEATURE_CONVERTER_CLS = feature_converters.PairedFeatureConverter

  def _default_loss_fn(self, label_smoothing, z_loss, loss_normalizing_factor
                       ) -> losses.LossFn:
    del loss_normalizing_factor  # per-task token means
    return losses.StepByStepLoss(label_smoothing=label_smoothing, z_loss=z_loss)

  def _extra_metrics(self, logits: Array, batch: Batch) -> dict[str, Any]:
    task_ids = batch.get('decoder_task_ids')
    if task_ids is None:
      return {}
    weights = batch.get('decoder_loss_weights')
    real = batch['decoder_target_tokens'] > 0 if weights is None else weights > 0
    tok, _ = losses.token_cross_entropy(logits, batch['decoder_target_tokens'])
    out = {}
    for t, name in enumerate(('label_loss', 'rationale_loss')):
      in_t = real & (task_ids == t)  # [batch, length]
      out[f'distill_sbs/{name}'] = clu_metrics.Average(
          total=jnp.sum(jnp.where(in_t, tok, 0.0)), count=jnp.sum(in_t))
    return out


class FirstEncoderDecoderModel(ProjectLossEncoderDecoderModel):
  """FIRST: KL(calibrated teacher top-k ‖ student) + optional gold CE.

  The loss is `losses.TopKDistillLoss` (gin: `loss_fn = %LOSS_FN`, whose
  `teacher_temperature = @topk.teacher_temperature()` reads the calibrated T
  from the records' manifest, as the project's trainer does);
  `teacher_temperature` / `kl_weight`, when given, override those fields.
  Batches carry `decoder_topk_ids` / `decoder_topk_logprobs` [batch, length, k]
  (`TopKFeatureConverter`).
  """

  FEATURE_CONVERTER_CLS = feature_converters.TopKFeatureConverter

  def __init__(self, module, input_vocabulary, output_vocabulary, optimizer_def,
               teacher_temperature: Optional[float] = None,
               kl_weight: Optional[float] = None,
               loss_fn: Optional[losses.LossFn] = None, **kwargs):
    if teacher_temperature is not None and not float(teacher_temperature) > 0:
      raise ValueError('FirstEncoderDecoderModel.teacher_temperature must be > 0, '
                       f'got {teacher_temperature!r}')
    self._teacher_temperature = (None if teacher_temperature is None
                                 else float(teacher_temperature))
    self._kl_weight = kl_weight
    super().__init__(module, input_vocabulary, output_vocabulary, optimizer_def,
                     loss_fn=None if loss_fn is None else self._override(loss_fn),
                     **kwargs)

  def _override(self, loss_fn: losses.LossFn) -> losses.LossFn:
    changes = {}
    if self._teacher_temperature is not None:
      changes['teacher_temperature'] = self._teacher_temperature
    if self._kl_weight is not None:
      changes['kl_weight'] = self._kl_weight
    if changes and dataclasses.is_dataclass(loss_fn):
      return dataclasses.replace(loss_fn, **changes)
    if changes:
      raise ValueError('FirstEncoderDecoderModel: teacher_temperature / kl_weight need a '
                       f'dataclass loss_fn such as TopKDistillLoss, got {loss_fn!r}')
    return loss_fn

  def _default_loss_fn(self, label_smoothing, z_loss, loss_normalizing_factor
                       ) -> losses.LossFn:
    return self._override(losses.TopKDistillLoss(
        label_smoothing=label_smoothing, z_loss=z_loss,
        loss_normalizing_factor=loss_normalizing_factor))
