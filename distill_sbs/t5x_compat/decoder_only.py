"""T5X `DecoderOnlyModel`s over `models.DecoderOnlyTransformer` trained with the
project's losses.

The network has T5X's decoder-only signature (`decoder_input_tokens`,
`decoder_target_tokens`, `decoder_segment_ids`, `decoder_positions`,
`decoder_causal_attention`), so T5X's `_compute_logits` runs it unchanged.
What differs from T5X's stock `DecoderOnlyModel`:

* batches come from `distill_sbs.data.decoder_only_converters` (rows
  `inputs ++ targets` cut, not shifted, as Hugging Face checkpoints expect; the
  T5X names below): `loss_fn` calls a `distill_sbs.distill.losses.LossFn` on
  the logits and the whole batch (`decoder_task_ids`, `decoder_topk_*` reach
  it), and every mask comes from `decoder_loss_weights` / segment ids, never
  from `token > 0` (id 0 is a real token of those vocabularies);
* `predict_batch_with_aux` decodes with the project's KV-cache decoding
  (`decoder_only_batches.predict`; greedy by default, `decode_method`), since
  T5X's prefill path needs network arguments the project's network lacks
  (`decode_fn` is accepted for T5X's signature and unused);
* `get_initial_variables` returns T5X's `params` + `params_axes` layout.

`inputs_bidirectional_attention=True` (prefix-LM) needs
`decoder_causal_attention` in the batch: bind the converter's `prefix_lm`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Union

from clu import metrics as clu_metrics
import jax
import jax.numpy as jnp
import seqio
from t5x import decoding
from t5x import metrics as metrics_lib
from t5x import models as t5x_models

from distill_sbs.distill import losses
from distill_sbs.t5x_compat import decoder_only_batches
from distill_sbs.t5x_compat import feature_converters
from distill_sbs.t5x_compat import variables as variables_lib

Array = jnp.ndarray
Batch = Mapping[str, Array]


class ProjectLossDecoderOnlyModel(t5x_models.DecoderOnlyModel):
  """T5X's decoder-only model trained with a project `LossFn`.

  Args (beyond T5X's `DecoderOnlyModel`):
    loss_fn: `(logits, batch) -> (scalar loss, metrics dict)`; default
      `losses.CrossEntropyLoss(label_smoothing, z_loss, loss_normalizing_factor)`
      (the three arguments are ignored when `loss_fn` is given).
    loss_normalizing_factor: a number, None, or one of `losses.NORMALIZERS`.
    decode_method: 'greedy' (default, as the project's eval), 'sample' or 'beam'.
    decode_options: extra `models.generate` options (temperature, topk, ...).
    max_decode_length: tokens generated per prompt (default: the batch length).
  """

  FEATURE_CONVERTER_CLS = feature_converters.DecoderOnlyFeatureConverter

  def __init__(self, module, vocabulary: seqio.Vocabulary, optimizer_def,
               decode_fn: t5x_models.DecodeFnCallable = decoding.temperature_sample,
               inputs_bidirectional_attention: bool = False,
               feature_converter_cls: Optional[Callable[..., seqio.FeatureConverter]] = None,
               label_smoothing: float = 0.0, z_loss: float = 1e-4,
               loss_normalizing_factor: Union[None, float, str] = losses.NUM_REAL_TARGET_TOKENS,
               loss_fn: Optional[losses.LossFn] = None, decode_method: str = 'greedy',
               decode_options: Optional[Mapping[str, Any]] = None,
               max_decode_length: Optional[int] = None):
    super().__init__(module=module, vocabulary=vocabulary, optimizer_def=optimizer_def,
                     decode_fn=decode_fn,
                     inputs_bidirectional_attention=inputs_bidirectional_attention,
                     feature_converter_cls=feature_converter_cls,
                     label_smoothing=label_smoothing, z_loss=z_loss,
                     loss_normalizing_factor=None)
    if isinstance(loss_normalizing_factor, str) and (
        loss_normalizing_factor not in losses.NORMALIZERS):
      raise ValueError(f'{type(self).__name__}.loss_normalizing_factor: unknown '
                       f'{loss_normalizing_factor!r}; use a number, None or one of '
                       f'{losses.NORMALIZERS}')
    if decode_method not in ('greedy', 'sample', 'beam'):
      raise ValueError(f"{type(self).__name__}.decode_method must be 'greedy', 'sample' "
                       f"or 'beam', got {decode_method!r}")
    self._loss_normalizing_factor = loss_normalizing_factor
    self._project_loss_fn = (loss_fn if loss_fn is not None else
                             self._default_loss_fn(label_smoothing, z_loss,
                                                   loss_normalizing_factor))
    self.decode_method = decode_method
    self.decode_options = dict(decode_options or {})
    self.max_decode_length = max_decode_length

  def _default_loss_fn(self, label_smoothing, z_loss, loss_normalizing_factor
                       ) -> losses.LossFn:
    return losses.CrossEntropyLoss(label_smoothing=label_smoothing, z_loss=z_loss,
                                   loss_normalizing_factor=loss_normalizing_factor)

  @property
  def project_loss_fn(self) -> losses.LossFn:
    return self._project_loss_fn

  @property
  def config(self) -> Any:
    return self.module.config

  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Any],
                            input_types: Optional[Mapping[str, Any]] = None) -> Any:
    """Initial variables (int32 tokens) with `params` unboxed and `params_axes` added."""
    del input_types
    shape = input_shapes['decoder_input_tokens']
    tokens = jnp.ones(shape, jnp.int32)
    boxed = self.module.init(rng, tokens, tokens, enable_dropout=False)
    import flax.core  # pylint: disable=g-import-not-at-top
    return flax.core.freeze(variables_lib.unbox_with_axes(boxed))

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[jax.Array]):
    """(scalar loss, T5X metrics) with the project's loss on the whole batch."""
    mask = decoder_only_batches.loss_mask(batch)
    logits = self._compute_logits(params, batch, dropout_rng)
    loss, aux = self._project_loss_fn(logits, batch)
    metrics = self._compute_metrics(
        logits=logits, targets=batch['decoder_target_tokens'], mask=mask, loss=loss,
        z_loss=aux.get('z_loss'), segment_ids=decoder_only_batches.metric_segment_ids(batch))
    for name, value in aux.items():
      if name not in ('loss', 'z_loss'):
        metrics[f'distill_sbs/{name}'] = metrics_lib.AveragePerStep(total=value)
    metrics.update(self._extra_metrics(logits, batch))
    return loss, metrics

  def _extra_metrics(self, logits: Array, batch: Batch) -> dict[str, Any]:
    del logits, batch
    return {}

  def score_batch(self, params, batch: Batch, return_intermediates: bool = False) -> Array:
    """Summed log-likelihood of the loss-weighted target tokens per row [batch]."""
    if return_intermediates:
      raise NotImplementedError('return_intermediates is not supported')
    mask = decoder_only_batches.loss_mask(batch)
    logits = self._compute_logits(params, batch, None).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, batch['decoder_target_tokens'][..., None], axis=-1)
    return jnp.sum(jnp.where(mask, tok[..., 0], 0.0), axis=-1)

  def predict_batch_with_aux(self, params, batch: Batch, rng: Optional[jax.Array] = None,
                             decoder_params: Optional[Mapping[str, Any]] = None,
                             return_all_decodes: bool = False, num_decodes: int = 1,
                             prompt_with_targets: bool = False
                             ) -> tuple[Array, Mapping[str, Array]]:
    """Continuations of each row's prompt part [batch, length] (T5X removes the
    prefix too) and {'scores'}; `decoder_params` are extra `models.generate`
    options ('decode_rng' is the sampling rng, as T5X's)."""
    del prompt_with_targets
    options = dict(self.decode_options)
    options.update({k: v for k, v in (decoder_params or {}).items() if k != 'decode_rng'})
    rng = (decoder_params or {}).get('decode_rng', rng)
    return decoder_only_batches.predict(
        self.config, params, batch, method=self.decode_method,
        max_decode_length=self.max_decode_length, rng=rng, num_decodes=num_decodes,
        return_all_decodes=return_all_decodes, options=options)


class SbsDecoderOnlyModel(ProjectLossDecoderOnlyModel):
  """Distilling step-by-step with a decoder-only student: the exact
  α·L_label + (1−α)·L_rationale objective (`losses.StepByStepLoss`, gin
  `loss_fn = %LOSS_FN`) on the rows of `DecoderOnlyPairedFeatureConverter`
  (label and rationale rows, `decoder_task_ids` 0 / 1 on their targets). Logs
  `label_loss` / `rationale_loss` (per-token CE of each task)."""

  FEATURE_CONVERTER_CLS = feature_converters.DecoderOnlyPairedFeatureConverter

  def _default_loss_fn(self, label_smoothing, z_loss, loss_normalizing_factor
                       ) -> losses.LossFn:
    del loss_normalizing_factor  # per-task token means
    return losses.StepByStepLoss(label_smoothing=label_smoothing, z_loss=z_loss)

  def _extra_metrics(self, logits: Array, batch: Batch) -> dict[str, Any]:
    tok, _ = losses.token_cross_entropy(logits, batch['decoder_target_tokens'])
    return {f'distill_sbs/{name}': clu_metrics.Average(total=total, count=count)
            for name, (total, count) in
            decoder_only_batches.task_token_means(tok, batch).items()}
