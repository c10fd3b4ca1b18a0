"""`EncoderDecoderModel`: network + vocabularies + optimizer + loss + decoding.

Mirrors T5X's `EncoderDecoderModel` (`get_initial_variables`, `loss_fn`,
`predict_batch`, `score_batch`, `FEATURE_CONVERTER_CLS`); configured in gin by
`t5x_configs/models/*.gin` through dynamic registration.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from distill_sbs import models
from distill_sbs.distill import losses as losses_lib

Array = jnp.ndarray
Batch = Mapping[str, Array]

_PACKING_FEATURES = ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions',
                     'decoder_positions')


class ModelBase:
  """What the encoder-decoder and decoder-only models share: the network, the
  vocabularies, the optimizer, the loss and the decoding settings.

  Args:
    module: the flax network.
    input_vocabulary / output_vocabulary: seqio vocabularies.
    optimizer_def: an `optimizers.OptimizerDef` (or optax transformation).
    loss_fn: a `losses.LossFn`: (logits, batch) -> (loss, metrics); it gets the
      whole batch, so extra features (task ids, teacher top-k) reach it.
    decode_method: 'greedy' | 'sample' | 'beam' for `predict_batch`.
    decode_options: extra keyword options for `distill_sbs.models.generate`
      (e.g. `num_beams`, `temperature`, `topk`).
    feature_converter_cls: the method's converter (e.g. the paired α converter).
    max_decode_length: default decode length when the batch has no targets.
  """

  def __init__(self, module: nn.Module, input_vocabulary: Any,
               output_vocabulary: Any, optimizer_def: Any,
               loss_fn: Optional[losses_lib.LossFn] = None,
               decode_method: str = 'greedy',
               decode_options: Optional[Mapping[str, Any]] = None,
               feature_converter_cls: Optional[type] = None,
               max_decode_length: Optional[int] = None):
    from distill_sbs.training import optimizers  # pylint: disable=g-import-not-at-top
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self.optimizer_def = optimizers.as_optimizer_def(optimizer_def)
    self._loss_fn = loss_fn if loss_fn is not None else losses_lib.CrossEntropyLoss()
    if decode_method not in ('greedy', 'sample', 'beam'):
      raise ValueError(f"{type(self).__name__}.decode_method must be 'greedy', 'sample' "
                       f"or 'beam', got {decode_method!r}")
    self.decode_method = decode_method
    self.decode_options = dict(decode_options or {})
    self._converter_cls = feature_converter_cls
    self.max_decode_length = max_decode_length

  @property
  def config(self) -> Any:
    return getattr(self.module, 'config', None)


class EncoderDecoderModel(ModelBase):
  """A T5-style encoder-decoder model for training, scoring and decoding
  (args: `ModelBase`; `feature_converter_cls` overrides `FEATURE_CONVERTER_CLS`)."""

  # None: the input pipeline's default, `data.feature_converters.EncDecFeatureConverter`
  # (kept out of this module: the model and train step import no TensorFlow).
  FEATURE_CONVERTER_CLS = None

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    if self._converter_cls is not None:
      self.FEATURE_CONVERTER_CLS = self._converter_cls  # pylint: disable=invalid-name

  # --------------------------------------------------------------------------
  # Initialisation and forward pass.
  # --------------------------------------------------------------------------
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple],
                            input_types: Optional[Mapping[str, Any]] = None) -> Any:
    """Boxed (logically partitioned) variables {'params': ...}."""
    input_types = input_types or {}

    def ones(name):
      return jnp.ones(input_shapes[name], input_types.get(name, jnp.int32))
    enc = ones('encoder_input_tokens')
    dec_shape = input_shapes.get('decoder_input_tokens',
                                 input_shapes.get('decoder_target_tokens'))
    dec = jnp.ones(dec_shape, jnp.int32)
    params_rng, dropout_rng = jax.random.split(rng)
    return self.module.init({'params': params_rng, 'dropout': dropout_rng}, enc, dec, dec,
                            enable_dropout=False)

  def compute_logits(self, params: Any, batch: Batch,
                     dropout_rng: Optional[jax.Array] = None) -> Array:
    """Teacher-forced logits [batch, target_len, vocab]."""
    kwargs = {k: batch[k] for k in _PACKING_FEATURES if k in batch}
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply({'params': params}, batch['encoder_input_tokens'],
                             batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                             enable_dropout=dropout_rng is not None, rngs=rngs, **kwargs)

  def loss_fn(self, params: Any, batch: Batch, dropout_rng: Optional[jax.Array]
              ) -> tuple[Array, dict[str, Array]]:
    """(scalar loss, metrics); metrics include token accuracy sums."""
    logits = self.compute_logits(params, batch, dropout_rng)
    loss, metrics = self._loss_fn(logits, batch)
    metrics = dict(metrics)
    metrics.update(token_accuracy_sums(logits, batch))
    metrics.update(slot_efficiency(batch))
    return loss, metrics

  # --------------------------------------------------------------------------
  # Scoring and decoding.
  # --------------------------------------------------------------------------
  def score_batch(self, params: Any, batch: Batch) -> Array:
    """Sum of target-token log-likelihoods per sequence, [batch]."""
    logits = self.compute_logits(params, batch).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    targets = batch['decoder_target_tokens']
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weights = batch.get('decoder_loss_weights')
    if weights is None:
      weights = (targets > 0).astype(jnp.float32)
    return jnp.sum(tok * (weights > 0), axis=-1)

  def predict_batch(self, params: Any, batch: Batch, rng: Optional[jax.Array] = None,
                    max_decode_length: Optional[int] = None) -> Array:
    """Decoded tokens [batch, max_decode_length] (0 after EOS)."""
    return self.predict_batch_with_aux(params, batch, rng, max_decode_length)[0]

  def predict_batch_with_aux(self, params: Any, batch: Batch,
                             rng: Optional[jax.Array] = None,
                             max_decode_length: Optional[int] = None
                             ) -> tuple[Array, dict[str, Array]]:
    length = max_decode_length or self._decode_length(batch)
    enc = batch['encoder_input_tokens']
    options = dict(self.decode_options)
    if self.decode_method == 'sample' and rng is not None:
      options.setdefault('rng', rng)
    tokens, log_probs = models.generate(self.config, params, enc, max_decode_length=length,
                                        method=self.decode_method, **options)
    return tokens, {'scores': log_probs}

  def _decode_length(self, batch: Batch) -> int:
    if 'decoder_target_tokens' in batch:
      return int(batch['decoder_target_tokens'].shape[1])
    if self.max_decode_length:
      return int(self.max_decode_length)
    raise ValueError('predict_batch: the batch has no decoder_target_tokens; set '
                     'EncoderDecoderModel.max_decode_length')


def slot_efficiency(batch: Batch) -> dict[str, Array]:
  """Fractions of the batch's encoder and decoder slots that hold real tokens
  (1.0: no padding); packing raises them. Real = segment id > 0 where the batch
  has segment ids (always for decoder-only rows, whose id 0 may be a real
  token), else token > 0 (T5 vocabularies: 0 is padding). A side the batch
  lacks (a decoder-only model has no encoder) is not reported."""
  out = {}
  for side, tokens in (('encoder', 'encoder_input_tokens'),
                       ('decoder', 'decoder_target_tokens')):
    segments = f'{side}_segment_ids'
    if segments in batch:
      real = batch[segments] > 0
    elif tokens in batch:
      real = batch[tokens] > 0
    else:
      continue
    out[f'{side}_slot_efficiency'] = jnp.mean(real).astype(jnp.float32)
  return out


def first_argmax(logits: Array) -> Array:
  """`jnp.argmax(logits, -1)` (the first index holding the maximum; [batch,
  length, vocab] -> [batch, length]) as a max and a min over the vocabulary:
  XLA:CPU runs argmax's (value, index) reduction as a slow pair reduction,
  ~2% of a T5 mini train step. Differs from argmax only on NaN logits."""
  best = jnp.max(logits, axis=-1, keepdims=True)                      # [b, l, 1]
  vocab = logits.shape[-1]
  ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)  # [b, l, v]
  return jnp.min(jnp.where(logits == best, ids, vocab), axis=-1)       # [b, l]


def token_accuracy_sums(logits: Array, batch: Batch) -> dict[str, Array]:
  """Correct and total real target tokens (to be summed over steps)."""
  targets = batch['decoder_target_tokens']
  weights = batch.get('decoder_loss_weights')
  mask = (targets > 0) if weights is None else (weights > 0)
  correct = (first_argmax(logits) == targets) & mask
  return {'correct_tokens': jnp.sum(correct).astype(jnp.float32),
          'real_tokens': jnp.sum(mask).astype(jnp.float32)}
