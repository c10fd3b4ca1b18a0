"""`DecoderOnlyModel`: a decoder-only student (Llama / Qwen / Gemma) for the trainer.

The interface of `training.model.EncoderDecoderModel` (what the trainer,
`evaluation.Predictor` and the gins use: `get_initial_variables`,
`compute_logits`, `loss_fn`, `score_batch`, `predict_batch(_with_aux)`,
`FEATURE_CONVERTER_CLS`, `config`) over `models.DecoderOnlyTransformer` and the
batches of `data.decoder_only_converters` (rows `inputs ++ targets`, loss on
the targets, segment ids always present). Configured in gin by
`t5x_configs/models/{llama,qwen3,gemma3}/*.gin`.

Converters: a method gin names an encoder-decoder converter
(`train/input_pipeline.DatasetConfig.feature_converter_cls`); `converter_for`
maps it to its decoder-only twin (`decoder_only_converters.converter_for`), so
the same method files serve both model families.

Padding is never `token == 0` here (id 0 is a real token in Hugging Face
vocabularies): metrics and scores read `decoder_segment_ids` /
`decoder_loss_weights`.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from distill_sbs import models
from distill_sbs.training import model as model_lib

Array = jnp.ndarray
Batch = Mapping[str, Array]

_NETWORK_FEATURES = ('decoder_segment_ids', 'decoder_positions', 'decoder_causal_attention')
_DECODER_FEATURES = ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights',
                     'decoder_segment_ids', 'decoder_positions', 'decoder_causal_attention')


class DecoderOnlyModel(model_lib.ModelBase):
  """A decoder-only LM for training, scoring and decoding.

  Args as `model.ModelBase`; `max_decode_length`: the number of tokens
  `predict_batch` generates after each prompt (default: the batch's length,
  inputs + targets; generation stops early once every row has its EOS).
  """

  # Features the evaluation `Predictor` feeds (and cuts to the longest real row
  # by `decoder_segment_ids`, the first of each trim group).
  PREDICT_FEATURES = _DECODER_FEATURES
  PREDICT_TRIM = (('decoder_segment_ids',) + tuple(
      k for k in _DECODER_FEATURES if k != 'decoder_segment_ids'),)
  SCORE_FEATURES = _DECODER_FEATURES
  SCORE_TRIM = PREDICT_TRIM

  # --------------------------------------------------------------------------
  # Feature converters (imported lazily: the train step imports no TensorFlow).
  # --------------------------------------------------------------------------
  @property
  def FEATURE_CONVERTER_CLS(self) -> type:  # pylint: disable=invalid-name
    return self.converter_for(self._converter_cls)

  def converter_for(self, cls: Optional[type]) -> type:
    """The decoder-only converter for a method's converter class (None: label)."""
    from distill_sbs.data import decoder_only_converters  # pylint: disable=g-import-not-at-top
    return decoder_only_converters.converter_for(cls)

  # --------------------------------------------------------------------------
  # Mesh.
  # --------------------------------------------------------------------------
  def validate_mesh(self, mesh: Any, rules: Any) -> None:
    """Raises `partitioning.ShardingError` when the query or key / value heads
    cannot be split over the mesh axis the 'heads' rule names (T5X's 'heads'
    → 'model'): `num_kv_heads` (and `num_heads`) must be multiples of it."""
    from distill_sbs.training import partitioning  # pylint: disable=g-import-not-at-top
    axes = next((a for name, a in rules if name == 'heads'), None)
    if axes is None:
      return
    names = axes if isinstance(axes, tuple) else (axes,)
    size = 1
    for a in names:
      size *= int(mesh.shape[a])
    cfg = self.config
    for field, param in (('num_kv_heads', 'key'), ('num_heads', 'query')):
      n = int(getattr(cfg, field))
      if n % size:
        raise partitioning.ShardingError(
            f'parameter decoder/layers_0/self_attention/{param}/kernel: '
            f'DecoderOnlyConfig.{field}={n} heads cannot be split over the {size}-way '
            f'mesh axis {"x".join(names)!r} (logical axis \'heads\'); use a model-parallel '
            f'size dividing {field} (MeshConfig.num_partitions), or map \'heads\' and '
            '\'joined_kv\' to None in the logical axis rules to replicate attention')

  # --------------------------------------------------------------------------
  # Initialisation and forward pass.
  # --------------------------------------------------------------------------
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple],
                            input_types: Optional[Mapping[str, Any]] = None) -> Any:
    """Boxed (logically partitioned) variables {'params': ...}."""
    del input_types
    shape = input_shapes.get('decoder_input_tokens', input_shapes.get('decoder_target_tokens'))
    tokens = jnp.ones(shape, jnp.int32)
    params_rng, dropout_rng = jax.random.split(rng)
    return self.module.init({'params': params_rng, 'dropout': dropout_rng}, tokens, tokens,
                            enable_dropout=False)

  def compute_logits(self, params: Any, batch: Batch,
                     dropout_rng: Optional[jax.Array] = None) -> Array:
    """Teacher-forced logits [batch, length, vocab]."""
    kwargs = {k: batch[k] for k in _NETWORK_FEATURES if k in batch}
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply({'params': params}, batch['decoder_input_tokens'],
                             batch.get('decoder_target_tokens'),
                             enable_dropout=dropout_rng is not None, rngs=rngs, **kwargs)

  def loss_fn(self, params: Any, batch: Batch, dropout_rng: Optional[jax.Array]
              ) -> tuple[Array, dict[str, Array]]:
    """(scalar loss, metrics); metrics include token accuracy sums and the
    decoder slot efficiency (by segment ids)."""
    _require_weights(batch)
    logits = self.compute_logits(params, batch, dropout_rng)
    loss, metrics = self._loss_fn(logits, batch)
    metrics = dict(metrics)
    metrics.update(model_lib.token_accuracy_sums(logits, batch))
    metrics.update(model_lib.slot_efficiency(batch))
    return loss, metrics

  # --------------------------------------------------------------------------
  # Scoring and decoding.
  # --------------------------------------------------------------------------
  def score_batch(self, params: Any, batch: Batch) -> Array:
    """Sum of the target tokens' log-likelihoods per row, [batch]."""
    _require_weights(batch)
    logits = self.compute_logits(params, batch).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    targets = batch['decoder_target_tokens']
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(batch['decoder_loss_weights'] > 0, tok, 0.0), axis=-1)

  def predict_batch(self, params: Any, batch: Batch, rng: Optional[jax.Array] = None,
                    max_decode_length: Optional[int] = None) -> Array:
    """Generated tokens [batch, max_decode_length] (pad id after EOS)."""
    return self.predict_batch_with_aux(params, batch, rng, max_decode_length)[0]

  def predict_batch_with_aux(self, params: Any, batch: Batch,
                             rng: Optional[jax.Array] = None,
                             max_decode_length: Optional[int] = None
                             ) -> tuple[Array, dict[str, Array]]:
    """Continues each row's inputs part: the prompt is `decoder_input_tokens`
    up to and including the position predicting the first target (the first
    loss-weighted position), left-aligned, as `models.generate` takes it.
    Prefix-LM rows (`decoder_causal_attention`) prefill with a bidirectional
    prompt, as they were trained."""
    prompts, lengths = prompt_from_batch(batch)
    length = int(max_decode_length or self.max_decode_length or prompts.shape[1])
    options = dict(self.decode_options)
    if self.decode_method == 'sample' and rng is not None:
      options.setdefault('rng', rng)
    # A prefix-LM student (`decoder_causal_attention` rows) decodes with a
    # bidirectional prompt, as it was trained.
    tokens, log_probs = models.generate(self.config, params, prompts,
                                        max_decode_length=length, prompt_lengths=lengths,
                                        method=self.decode_method,
                                        prefix_lm='decoder_causal_attention' in batch,
                                        **options)
    return tokens, {'scores': log_probs}


def prompt_from_batch(batch: Batch) -> tuple[Array, Array]:
  """(prompts [batch, length], prompt_lengths [batch]) of converter rows: the
  inputs part ends at the first loss-weighted position (a row without one,
  e.g. batch padding, gets its full length)."""
  _require_weights(batch)
  prompts = jnp.asarray(batch['decoder_input_tokens'], jnp.int32)
  weighted = jnp.asarray(batch['decoder_loss_weights']) > 0
  first = jnp.argmax(weighted, axis=1)
  lengths = jnp.where(jnp.any(weighted, axis=1), first + 1, prompts.shape[1])
  return prompts, lengths.astype(jnp.int32)


def _require_weights(batch: Batch) -> None:
  if 'decoder_loss_weights' not in batch:
    raise KeyError('DecoderOnlyModel needs decoder_loss_weights (no token id marks '
                   'padding); use a converter of distill_sbs.data.decoder_only_converters')
