"""T5 building blocks (as T5X's `examples/t5/layers.py`): dense, embedding,
RMS layer norm, MLP, multi-head attention with a key/value cache, relative
position biases and attention-mask helpers.

Parameters are created with `nn.with_logical_partitioning` (boxed) under T5X's
names and logical axes; activations are constrained with
`nn.with_logical_constraint` (a no-op outside a logical-axis-rules context).
"""
from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import errors as flax_errors
from flax import linen as nn
from jax import lax

from distill_sbs.models.config import activation_fn

Array = jnp.ndarray
DType = Any
Initializer = Callable[..., Array]

default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
NEG_INF = -1e10


def param(module: nn.Module, name: str, init: Initializer, shape, dtype,
          axes: tuple[str, ...]) -> Array:
  """`module.param` with logical axes `axes`. When the parameter exists (apply),
  it is read directly and its shape checked against `shape`: flax's own check
  abstractly evaluates the initialiser for every parameter on every trace,
  ~40% of tracing a T5 decode loop."""
  shape = tuple(int(d) for d in shape)
  if module.has_variable('params', name) and not module.is_initializing():
    value = nn.meta.unbox(module.get_variable('params', name))
    if np.shape(value) != shape:
      raise flax_errors.ScopeParamShapeError(name, module.scope.path_text,
                                             np.shape(value), shape)
    return value
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class DenseGeneral(nn.Module):
  """Bias-free linear map over `axis`; the kernel is stored 2-D as in T5X."""
  features: int | tuple[int, ...]
  axis: int | tuple[int, ...] = -1
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  kernel_init: Initializer = default_kernel_init
  kernel_axes: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = self.features if isinstance(self.features, tuple) else (self.features,)
    axis = self.axis if isinstance(self.axis, tuple) else (self.axis,)
    inputs = jnp.asarray(inputs, self.dtype)
    axis = tuple(a if a >= 0 else inputs.ndim + a for a in axis)
    in_shape = tuple(inputs.shape[a] for a in axis)
    kernel = param(self, 'kernel', self.kernel_init,
                   (int(np.prod(in_shape)), int(np.prod(features))),
                   self.param_dtype, self.kernel_axes)
    kernel = jnp.asarray(kernel, self.dtype).reshape(in_shape + features)
    contract = tuple(range(len(axis)))
    return lax.dot_general(inputs, kernel, ((axis, contract), ((), ())))


class Embed(nn.Module):
  """Token embedding [vocab, embed]; `attend` gives tied-embedding logits."""
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  attend_dtype: Optional[DType] = None
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = param(self, 'embedding', self.embedding_init,
                           (self.num_embeddings, self.features), self.param_dtype,
                           ('vocab', 'embed'))

  def __call__(self, inputs: Array) -> Array:
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f'Embed: token ids must be integers, got {inputs.dtype}')
    # A gather (not T5X's one-hot matmul): far cheaper off TPU.
    output = jnp.take(jnp.asarray(self.embedding, self.dtype), inputs, axis=0)
    return nn.with_logical_constraint(output, ('batch', 'length', 'embed'))

  def attend(self, query: Array) -> Array:
    dtype = self.attend_dtype or self.dtype
    return jnp.dot(jnp.asarray(query, dtype), jnp.asarray(self.embedding, dtype).T)


class LayerNorm(nn.Module):
  """T5 RMS norm: no mean subtraction, no bias; statistics in float32."""
  epsilon: float = 1e-6
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(lax.square(x), axis=-1, keepdims=True)
    y = jnp.asarray(x * lax.rsqrt(mean2 + self.epsilon), self.dtype)
    scale = param(self, 'scale', nn.initializers.ones, (x.shape[-1],),
                  self.param_dtype, ('embed',))
    return y * jnp.asarray(scale, self.dtype)


class MlpBlock(nn.Module):
  """Feed-forward block; several activations are multiplied (gated GELU)."""
  intermediate_dim: int
  activations: Sequence[str] = ('relu',)
  intermediate_dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = False) -> Array:
    hidden = []
    for idx, act in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{idx}'
      x = DenseGeneral(self.intermediate_dim, dtype=self.dtype,
                       param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                       kernel_axes=('embed', 'mlp'), name=name)(inputs)
      hidden.append(activation_fn(act)(x))
    x = functools.reduce(operator.mul, hidden)  # [batch, length, mlp]
    x = nn.Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'mlp'))
    return DenseGeneral(inputs.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=self.kernel_init, kernel_axes=('mlp', 'embed'),
                        name='wo')(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_batch(bias: Array, batch: int) -> Array:
  """[1, h, q, k] -> [batch, h, q, k]; its gradient sums over the batch as a dot
  with ones. XLA:CPU reduces a leading axis single-threaded: that reduction of
  the relative-position bias' gradient took ~25% of a packed tiny-T5 training
  step (768-token rows); the dot is memory-bound like the rest of attention.
  Same numbers up to summation order."""
  return jnp.broadcast_to(bias, (batch,) + bias.shape[1:])


def _broadcast_batch_fwd(bias, batch):
  return broadcast_batch(bias, batch), None


def _broadcast_batch_bwd(batch, _, g):  # g: [batch, h, q, k]
  ones = jnp.ones((batch,), g.dtype)
  return (jnp.einsum('b,bhqk->hqk', ones, g)[None],)  # [1, h, q, k]


broadcast_batch.defvjp(_broadcast_batch_fwd, _broadcast_batch_bwd)


@jax.custom_vjp
def _softmax_attention(query: Array, key: Array, value: Array, bias: Array,
                       keep: Array) -> Array:
  """softmax(q k^T + bias) v with the softmax normalised on the output.

  q [b, q, h, d], k / v [b, k, h, d], bias broadcastable to [b, h, q, k] (already
  in the logits' dtype), keep [b|1, h|1, 1|q, k] the scaled dropout mask (ones
  without dropout) -> [b, q, h, d] in value's dtype.

  Forward: logits, their row max, e = exp(logits - max) (the only [b, h, q, k]
  tensor kept for the backward pass), numerator (e * keep) v and denominator
  sum(e) as one product with a ones column appended to v when there is no dropout,
  out = numerator / denominator. Backward (as FlashAttention): with P = e / sum,
  dlogits = P * (keep * dout v^T - D), D = rowsum(dout * out) [b, q, h] (a sum over
  d, not over k as autodiff's rowsum(P * dP)); dv = (P * keep)^T dout. Memory-bound
  on CPU, this makes ~6 passes over [b, h, q, k] fewer than autodiff of
  `jax.nn.softmax` (normalise, its saved broadcast, the backward's row sums).
  """
  return _softmax_attention_fwd(query, key, value, bias, keep)[0]


def _softmax_attention_fwd(query, key, value, bias, keep):
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key) + bias  # [b, h, q, k]
  top = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  e = jnp.exp(logits - top)                                  # [b, h, q, k]
  ev = e.astype(value.dtype)
  if keep.ndim == 0:  # no dropout: the denominator comes with the product
    ones = jnp.ones(value.shape[:-1] + (1,), value.dtype)
    both = jnp.einsum('bhqk,bkhd->bqhd', ev, jnp.concatenate([value, ones], -1))
    num, denom = both[..., :-1], both[..., -1]               # [b, q, h, d], [b, q, h]
  else:
    num = jnp.einsum('bhqk,bkhd->bqhd', ev * keep.astype(ev.dtype), value)
    denom = jnp.transpose(jnp.sum(e, axis=-1), (0, 2, 1))   # [b, q, h]
  denom = denom.astype(jnp.float32)
  out = (num.astype(jnp.float32) / denom[..., None]).astype(value.dtype)
  return out, (query, key, value, bias, keep, e, denom, out)


def _softmax_attention_bwd(res, dout):  # dout [b, q, h, d]
  query, key, value, bias, keep, e, denom, out = res
  inv = 1.0 / denom                                          # [b, q, h]
  dout32 = dout.astype(jnp.float32)
  d_row = jnp.sum(dout32 * out.astype(jnp.float32), axis=-1) * inv  # D / sum [b, q, h]
  scaled = (dout32 * inv[..., None]).astype(value.dtype)     # dout / sum
  pk = e.astype(value.dtype)
  if keep.ndim:
    pk = pk * keep.astype(pk.dtype)
  dvalue = jnp.einsum('bhqk,bqhd->bkhd', pk, scaled)
  dp = jnp.einsum('bqhd,bkhd->bhqk', scaled, value).astype(e.dtype)  # [b, h, q, k]
  if keep.ndim:
    dp = dp * keep.astype(dp.dtype)
  dlogits = e * (dp - jnp.transpose(d_row, (0, 2, 1))[..., None].astype(e.dtype))
  dquery = jnp.einsum('bhqk,bkhd->bqhd', dlogits, key.astype(dlogits.dtype))
  dkey = jnp.einsum('bhqk,bqhd->bkhd', dlogits, query.astype(dlogits.dtype))
  sum_axes = tuple(i for i, n in enumerate(bias.shape) if n == 1 and dlogits.shape[i] != 1)
  dbias = jnp.sum(dlogits, axis=sum_axes, keepdims=True) if sum_axes else dlogits
  return (dquery.astype(query.dtype), dkey.astype(key.dtype), dvalue.astype(value.dtype),
          dbias.astype(bias.dtype), jnp.zeros_like(keep))


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def dot_product_attention(query: Array, key: Array, value: Array,
                          bias: Optional[Array] = None,
                          dropout_rng: Optional[Array] = None,
                          dropout_rate: float = 0.0, deterministic: bool = True,
                          dtype: DType = jnp.float32,
                          float32_logits: bool = False, kernel: str = 'einsum') -> Array:
  """Unscaled dot-product attention: q [b, q, h, d], k/v [b, k, h, d].

  kernel='jax' calls `jax.nn.dot_product_attention` (scale 1, the additive bias
  carries masks and relative positions; the fused cuDNN kernel where the
  platform has one), when no attention dropout applies; 'einsum' spells it out
  (`_softmax_attention`: its own gradient, fewer passes over [b, h, q, k]).
  """
  if kernel == 'jax' and (deterministic or dropout_rate == 0.0):
    q, k, v = query, key, value
    if float32_logits:
      q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    b = None if bias is None else bias.astype(q.dtype)       # [b|1, h, q, k]
    out = jax.nn.dot_product_attention(q, k, v, bias=b, scale=1.0)  # [b, q, h, d]
    return out.astype(dtype)
  if float32_logits:
    query = query.astype(jnp.float32)
    key = key.astype(jnp.float32)
  logit_dtype = jnp.result_type(query.dtype, key.dtype)
  bias = (jnp.zeros((1, 1, 1, 1), logit_dtype) if bias is None
          else bias.astype(logit_dtype))
  keep = jnp.ones((), dtype)
  if not deterministic and dropout_rate > 0.0:
    keep_prob = 1.0 - dropout_rate
    b, q, h, _ = query.shape
    # One mask per key, shared by the queries (T5X's broadcast dropout).
    mask = jax.random.bernoulli(dropout_rng, keep_prob, (b, h, 1, key.shape[1]))
    keep = mask.astype(dtype) / jnp.asarray(keep_prob, dtype)
  return _softmax_attention(query, key, value.astype(dtype), bias, keep)  # [b, q, h, d]


class MultiHeadDotProductAttention(nn.Module):
  """T5X multi-head attention with its `cache` collection semantics.

  With `decode=True` the first call (no `cached_key` yet) only creates zeroed
  `cached_key`/`cached_value` [batch, length, heads, head_dim] (the layout
  attention reads; T5X keeps [batch, heads, head_dim, length] for TPUs) and
  `cache_index`; later calls take one query position and write its key/value.
  With `cross=True` (encoder-decoder attention) the projected encoder
  keys/values are computed on the first decoding step and then read back from
  the cache instead of being re-projected every step.
  """
  num_heads: int
  head_dim: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
  float32_logits: bool = False
  cross: bool = False
  kernel: str = 'einsum'

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array,
               mask: Optional[Array] = None, bias: Optional[Array] = None, *,
               decode: bool = False, deterministic: bool = False) -> Array:
    projection = functools.partial(
        DenseGeneral, axis=-1, features=(self.num_heads, self.head_dim),
        kernel_axes=('embed', 'joined_kv'), dtype=self.dtype,
        param_dtype=self.param_dtype)
    # T5 folds 1/sqrt(head_dim) into the query initialiser, not the logits.
    depth_scaling = jnp.sqrt(self.head_dim).astype(self.param_dtype)
    query_init = lambda *args: self.kernel_init(*args) / depth_scaling
    axes = ('batch', 'length', 'heads', 'kv')
    query = projection(kernel_init=query_init, name='query')(inputs_q)
    query = nn.with_logical_constraint(query, axes)  # [b, q, h, d]
    key_proj = projection(kernel_init=self.kernel_init, name='key')
    value_proj = projection(kernel_init=self.kernel_init, name='value')

    if decode and self.cross:
      key, value = self._cached_cross_kv(inputs_kv, key_proj, value_proj)
    else:
      key = nn.with_logical_constraint(key_proj(inputs_kv), axes)
      value = nn.with_logical_constraint(value_proj(inputs_kv), axes)
      if decode:
        key, value, mask, bias = self._self_attention_cache(query, key, value, mask, bias)

    attention_bias = None
    if mask is not None:
      attention_bias = lax.select(mask > 0, jnp.zeros(mask.shape, self.dtype),
                                  jnp.full(mask.shape, NEG_INF, self.dtype))
    if bias is not None:  # [1, h, q, k] relative positions, shared by the batch
      if bias.shape[0] == 1 and query.shape[0] > 1:
        bias = broadcast_batch(bias, query.shape[0])
      attention_bias = bias if attention_bias is None else attention_bias + bias
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng('dropout')
    x = dot_product_attention(query, key, value, bias=attention_bias,
                              dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
                              deterministic=deterministic, dtype=self.dtype,
                              float32_logits=self.float32_logits, kernel=self.kernel)
    return DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1),
                        kernel_init=self.kernel_init, kernel_axes=('joined_kv', 'embed'),
                        dtype=self.dtype, param_dtype=self.param_dtype, name='out')(x)

  def _self_attention_cache(self, query, key, value, mask, bias):
    is_initialized = self.has_variable('cache', 'cached_key')
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape,
                                 value.dtype)
    cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if not is_initialized:
      return key, value, mask, bias
    batch, length, num_heads, head_dim = cached_key.value.shape
    if query.shape != (batch, 1, num_heads, head_dim):
      raise ValueError(f'Autoregressive cache shape error: expected query shape '
                       f'{(batch, 1, num_heads, head_dim)}, got {query.shape}')
    cur = cache_index.value
    # Write this position's key / value in place: the cache is kept in the
    # [batch, length, heads, head_dim] layout attention reads, so no step
    # transposes it.
    zero = jnp.zeros((), jnp.int32)
    key = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                   (zero, cur, zero, zero))
    value = lax.dynamic_update_slice(cached_value.value,
                                     value.astype(cached_value.value.dtype),
                                     (zero, cur, zero, zero))
    cached_key.value, cached_value.value = key, value
    cache_index.value = cur + 1
    causal = jnp.broadcast_to(jnp.arange(length) <= cur, (batch, 1, 1, length))
    mask = combine_masks(mask, causal)
    if bias is not None and bias.shape[-2] > 1:
      # bias [1, h, length, length] -> the current query row [1, h, 1, length]
      # (the T5 decoder passes that row already).
      bias = lax.dynamic_slice_in_dim(bias, cur, 1, axis=-2)
    return key, value, mask, bias

  def _cached_cross_kv(self, inputs_kv, key_proj, value_proj):
    # Cache leaves: `cache_index` keeps T5X's `cache_map` from beam-expanding
    # the flag; keys/values are [batch, kv_length, heads, head_dim], the layout
    # attention reads (batch first, as T5X's cache_map expects).
    b, kv_len = inputs_kv.shape[0], inputs_kv.shape[1]
    shape = (b, kv_len, self.num_heads, self.head_dim)
    is_initialized = self.has_variable('cache', 'cached_key')
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, shape, self.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, shape, self.dtype)
    cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))

    def project(_):
      return (key_proj(inputs_kv).astype(self.dtype),
              value_proj(inputs_kv).astype(self.dtype))

    if not is_initialized or self.is_initializing():
      k, v = project(None)
    else:
      k, v = lax.cond(cache_index.value == 0, project,
                      lambda _: (cached_key.value, cached_value.value), None)
      cached_key.value, cached_value.value = k, v
      cache_index.value = cache_index.value + 1
    axes = ('batch', 'length', 'heads', 'kv')
    return nn.with_logical_constraint(k, axes), nn.with_logical_constraint(v, axes)


def relative_position_bucket(relative_position, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128, xp=np):
  """T5's bucketing of memory_position - query_position (numpy when static,
  `xp=jnp` for a traced query position)."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = xp.abs(n)
  else:
    n = xp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      xp.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps) /
      np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = xp.minimum(val_if_large, num_buckets - 1)
  return ret + xp.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
  """Per-head learned bias for each relative-position bucket."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  embedding_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool = True,
               query_position: Optional[Array] = None) -> Array:
    """Returns the bias [1, heads, qlen, klen]; with `query_position` (a traced
    scalar, decoding) only that query row, [1, heads, 1, klen]."""
    memory = np.arange(klen, dtype=np.int32)[None, :]
    if query_position is None:
      context = np.arange(qlen, dtype=np.int32)[:, None]
      xp = np
    else:
      context = jnp.reshape(query_position, (1, 1)).astype(jnp.int32)
      xp = jnp
    buckets = relative_position_bucket(memory - context, bidirectional=bidirectional,
                                       num_buckets=self.num_buckets,
                                       max_distance=self.max_distance, xp=xp)
    table = param(self, 'rel_embedding', self.embedding_init,
                  (self.num_heads, self.num_buckets), self.param_dtype,
                  ('heads', 'relpos_buckets'))
    values = jnp.take(jnp.asarray(table, self.dtype), jnp.asarray(buckets), axis=1)
    return values[jnp.newaxis]  # [1, h, qlen | 1, klen]


def make_attention_mask(query_input: Array, key_input: Array,
                        pairwise_fn: Callable = jnp.multiply,
                        dtype: DType = jnp.float32) -> Array:
  """[batch, len_q], [batch, len_kv] -> mask [batch, 1, len_q, len_kv]."""
  mask = pairwise_fn(jnp.expand_dims(query_input, -1), jnp.expand_dims(key_input, -2))
  return jnp.expand_dims(mask, -3).astype(dtype)


def make_causal_mask(x: Array, dtype: DType = jnp.float32) -> Array:
  idxs = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
  return make_attention_mask(idxs, idxs, jnp.greater_equal, dtype=dtype)


def combine_masks(*masks: Optional[Array], dtype: DType = jnp.float32) -> Optional[Array]:
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  mask = masks[0]
  for other in masks[1:]:
    mask = jnp.logical_and(mask, other)
  return mask.astype(dtype)


def make_decoder_mask(decoder_target_tokens: Array, dtype: DType,
                      decoder_causal_attention: Optional[Array] = None,
                      decoder_segment_ids: Optional[Array] = None) -> Array:
  """Causal x padding (x packing) self-attention mask, as T5X."""
  causal = make_causal_mask(decoder_target_tokens, dtype=dtype)
  if decoder_causal_attention is not None:
    inputs_mask = make_attention_mask(decoder_causal_attention, decoder_causal_attention,
                                      jnp.logical_and, dtype=dtype)
    causal = jnp.logical_or(causal, inputs_mask).astype(dtype)
  masks = [causal, make_attention_mask(decoder_target_tokens > 0,
                                       decoder_target_tokens > 0, dtype=dtype)]
  if decoder_segment_ids is not None:
    masks.append(make_attention_mask(decoder_segment_ids, decoder_segment_ids,
                                     jnp.equal, dtype=dtype))
  return combine_masks(*masks, dtype=dtype)
