"""The decoder-only `DecoderOnlyTransformer` (Llama / Qwen2 / Qwen3 / Gemma 3 text).

T5X decoder-only network interface and names (2-D kernels, logical axes in
brackets; `bias` / norm leaves only where the config has them):

  decoder/token_embedder/embedding                              [vocab, embed]
  decoder/layers_{i}/pre_self_attention_layer_norm/scale        [embed]
  decoder/layers_{i}/self_attention/{query,key,value}/kernel    [embed, joined_kv]
  decoder/layers_{i}/self_attention/{query,key,value}/bias      [joined_kv]
  decoder/layers_{i}/self_attention/{query_norm,key_norm}/scale [kv]
  decoder/layers_{i}/self_attention/out/{kernel, bias}          [joined_kv, embed], [embed]
  decoder/layers_{i}/post_self_attention_layer_norm/scale       [embed] (Gemma)
  decoder/layers_{i}/pre_mlp_layer_norm/scale                   [embed]
  decoder/layers_{i}/mlp/{wi_0, wi_1}/kernel                    [embed, mlp] (gate, up)
  decoder/layers_{i}/mlp/wo/kernel                              [mlp, embed]
  decoder/layers_{i}/post_mlp_layer_norm/scale                  [embed] (Gemma)
  decoder/decoder_norm/scale                                    [embed]
  decoder/logits_dense/kernel                                   [embed, vocab] (untied)

Key / value heads are laid out on the 'heads' / 'joined_kv' axes like query
heads (with fewer kv heads than the model-parallel size, the mesh rules must
map 'heads' to a divisor of num_kv_heads or replicate it).

No token id means padding: right padding never reaches real positions under
causal attention, packed rows are separated by `decoder_segment_ids` (0 =
padding) and RoPE reads `decoder_positions` (default 0..length-1).
`decoder_causal_attention` (1 on the prefix) makes the prefix bidirectional
(prefix-LM, as T5X).

With `decode=True` keys / values go to the `cache` collection
(`cached_key`, `cached_value` [batch, cache_length, kv_heads, head_dim]): the
first call (its input length is the cache length) only creates the zeroed
cache; each later call writes its [batch, l] tokens at the per-row cache
indices `decoder_positions[:, 0]...` and attends to cache index j <= position
(left-aligned rows, so cache index = position). A prefill call given
`decoder_causal_attention` (1 on each row's prompt, a prefix from position 0)
lets the prompt attend bidirectionally within itself, as in training (prefix-LM).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from distill_sbs.models import layers
from distill_sbs.models.config import activation_fn
from distill_sbs.models.decoder_only_config import DecoderOnlyConfig

Array = jnp.ndarray
NEG_INF = -1e10
default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


class Dense(nn.Module):
  """x @ kernel [in, out] (+ bias [out])."""
  features: int
  kernel_axes: tuple[str, str]
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = layers.param(self, 'kernel', default_kernel_init,
                          (x.shape[-1], self.features), self.param_dtype, self.kernel_axes)
    y = jnp.dot(jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype))
    if self.use_bias:
      bias = layers.param(self, 'bias', nn.initializers.zeros, (self.features,),
                          self.param_dtype, self.kernel_axes[-1:])
      y = y + jnp.asarray(bias, self.dtype)
    return y


class RMSNorm(nn.Module):
  """RMS norm over the last axis, statistics in float32; x * w or x * (1 + w)."""
  epsilon: float = 1e-6
  plus_one: bool = False
  axis_name: str = 'embed'
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = layers.param(self, 'scale', init, (x.shape[-1],), self.param_dtype,
                         (self.axis_name,))
    x = jnp.asarray(x, jnp.float32)
    y = x * lax.rsqrt(jnp.mean(lax.square(x), axis=-1, keepdims=True) + self.epsilon)
    w = jnp.asarray(scale, jnp.float32)
    return jnp.asarray(y * (1.0 + w if self.plus_one else w), self.dtype)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """HF rotate-half RoPE: x [b, l, h, d], positions [b, l]."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [b, l, 1, d]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  xf = x.astype(jnp.float32)
  return (xf * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def _mask_bias(mask: Array, dtype) -> Array:
  return jnp.where(mask, jnp.zeros((), dtype), jnp.full((), NEG_INF, dtype))


def attention_masks(length: int, segment_ids: Optional[Array],
                    causal_attention: Optional[Array],
                    sliding_window: Optional[int]) -> tuple[Array, Optional[Array]]:
  """Boolean (full, sliding) masks [b|1, 1, length, length] (sliding None if unused)."""
  idx = jnp.arange(length)
  mask = (idx[:, None] >= idx[None, :])[None, None]  # [1, 1, q, k]
  if causal_attention is not None:
    prefix = causal_attention.astype(bool)
    mask = mask | (prefix[:, None, :, None] & prefix[:, None, None, :])
  if segment_ids is not None:
    mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  sliding = None
  if sliding_window:
    sliding = mask & ((idx[:, None] - idx[None, :]) < sliding_window)[None, None]
  return mask, sliding


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE, optional q/k norms and a KV cache."""
  config: DecoderOnlyConfig
  layer: int

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Optional[Array], *,
               deterministic: bool, decode: bool = False) -> Array:
    cfg = self.config
    dtype, pdtype = cfg.activation_dtype, cfg.weight_dtype
    b, l = x.shape[0], x.shape[1]
    h, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    axes = ('batch', 'length', 'heads', 'kv')

    def proj(name, heads):
      y = Dense(heads * d, ('embed', 'joined_kv'), cfg.qkv_bias, dtype, pdtype,
                name=name)(x)
      return nn.with_logical_constraint(y.reshape(b, l, heads, d), axes)

    q, k, v = proj('query', h), proj('key', kvh), proj('value', kvh)  # [b, l, h|kvh, d]
    if cfg.qk_norm:
      norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, cfg.norm_plus_one, 'kv', dtype,
                                  pdtype, name=name)
      q, k = norm('query_norm')(q), norm('key_norm')(k)
    inv_freq = cfg.inv_freq(self.layer)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)

    if decode:  # `mask` is then None or the prefill's causal attention [b, l]
      k, v, mask = self._cache(k, v, positions, mask)
    logit_dtype = jnp.float32 if cfg.float32_attention_logits else dtype
    if cfg.attention_kernel == 'jax' and (deterministic or cfg.dropout_rate == 0.0):
      qkv = [t.astype(logit_dtype) for t in (q, k, v)]  # kv heads grouped natively
      out = jax.nn.dot_product_attention(*qkv, mask=mask, scale=cfg.attention_scale())
      return self._out(out.astype(dtype))
    if kvh != h:  # [b, k, h, d]: kv head i serves query heads i*g .. i*g+g-1
      k = nn.with_logical_constraint(jnp.repeat(k, h // kvh, axis=2), axes)
      v = nn.with_logical_constraint(jnp.repeat(v, h // kvh, axis=2), axes)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q.astype(logit_dtype), k.astype(logit_dtype))
    logits = logits * jnp.asarray(cfg.attention_scale(), logit_dtype)  # [b, h, q, k]
    if mask is not None:
      logits = logits + _mask_bias(mask, logit_dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32)).astype(dtype)
    if not deterministic and cfg.dropout_rate > 0.0:
      weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=False)
    return self._out(jnp.einsum('bhqk,bkhd->bqhd', weights, v.astype(dtype)))

  def _out(self, out: Array) -> Array:
    """[b, l, heads, head_dim] -> [b, l, emb]."""
    cfg = self.config
    b, l = out.shape[:2]
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'kv'))
    return Dense(cfg.emb_dim, ('joined_kv', 'embed'), cfg.out_bias, cfg.activation_dtype,
                 cfg.weight_dtype, name='out')(out.reshape(b, l, -1))

  def _cache(self, k, v, positions, causal_attention=None):
    """Writes k / v [b, l, kvh, d] at cache indices positions[:, 0]...; returns the
    whole cache and its mask [b, 1, l, cache_length] (prompt positions, 1 in
    `causal_attention` [b, l], also see the rest of their row's prompt)."""
    cfg = self.config
    initialized = self.has_variable('cache', 'cached_key')
    cached_k = self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
    if not initialized:
      return k, v, None
    write = jax.vmap(lambda c, u, s: lax.dynamic_update_slice_in_dim(c, u, s, axis=0))
    start = positions[:, 0].astype(jnp.int32)
    cached_k.value = write(cached_k.value, k.astype(cached_k.value.dtype), start)
    cached_v.value = write(cached_v.value, v.astype(cached_v.value.dtype), start)
    j = jnp.arange(cached_k.value.shape[1])[None, None, :]
    pos = positions[:, :, None]
    mask = j <= pos  # [b, l, cache_length]
    if causal_attention is not None:
      prompt = causal_attention.astype(bool)  # [b, l]
      prompt_len = jnp.sum(prompt, axis=1)[:, None, None]  # a prefix from 0
      mask = mask | (prompt[:, :, None] & (j < prompt_len))
    if cfg.is_sliding(self.layer):
      mask = mask & (pos - j < cfg.sliding_window)
    return cached_k.value, cached_v.value, mask[:, None]


class Mlp(nn.Module):
  """Gated MLP: wo(act(x wi_0) * (x wi_1)) (SwiGLU / GeGLU)."""
  config: DecoderOnlyConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    dense = lambda n, f, a: Dense(f, a, False, cfg.activation_dtype, cfg.weight_dtype,
                                  name=n)
    gate = activation_fn(cfg.mlp_activation)(dense('wi_0', cfg.mlp_dim, ('embed', 'mlp'))(x))
    y = gate * dense('wi_1', cfg.mlp_dim, ('embed', 'mlp'))(x)  # [batch, length, mlp]
    y = nn.with_logical_constraint(y, ('batch', 'length', 'mlp'))
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    return dense('wo', cfg.emb_dim, ('mlp', 'embed'))(y)


class DecoderLayer(nn.Module):
  """Pre-norm attention + MLP residual block (Gemma: also post-norms)."""
  config: DecoderOnlyConfig
  layer: int

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Optional[Array],
               deterministic: bool = True, decode: bool = False) -> Array:
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, cfg.norm_plus_one, 'embed',
                                cfg.activation_dtype, cfg.weight_dtype, name=name)
    drop = lambda y: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        y, deterministic=deterministic)
    h = Attention(cfg, self.layer, name='self_attention')(
        norm('pre_self_attention_layer_norm')(x), positions, mask,
        deterministic=deterministic, decode=decode)
    if cfg.post_norms:
      h = norm('post_self_attention_layer_norm')(h)
    x = x + drop(h)
    h = Mlp(cfg, name='mlp')(norm('pre_mlp_layer_norm')(x), deterministic)
    if cfg.post_norms:
      h = norm('post_mlp_layer_norm')(h)
    x = x + drop(h)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class Decoder(nn.Module):
  """Embedding, layers, final norm and logits."""
  config: DecoderOnlyConfig

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, segment_ids: Optional[Array],
               causal_attention: Optional[Array], deterministic: bool,
               decode: bool) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dtype,
                            param_dtype=cfg.weight_dtype, attend_dtype=jnp.float32,
                            embedding_init=nn.initializers.normal(stddev=0.02),
                            name='token_embedder')
    x = embedder(tokens.astype(jnp.int32))  # [batch, length, emb]
    if cfg.scale_embeddings:
      x = x * jnp.asarray(np.sqrt(cfg.emb_dim), cfg.weight_dtype).astype(dtype)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    full = sliding = None
    if not decode:
      full, sliding = attention_masks(tokens.shape[1], segment_ids, causal_attention,
                                      cfg.sliding_window if 'sliding_attention'
                                      in cfg.layer_types else None)
    elif causal_attention is not None:  # a prefix-LM prefill (see Attention._cache)
      full = sliding = jnp.asarray(causal_attention)
    layer_cls = DecoderLayer
    if cfg.remat_policy != 'none' and not decode:
      policy = (jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
                if cfg.remat_policy == 'minimal' else None)
      layer_cls = nn.remat(DecoderLayer, policy=policy, static_argnums=(4, 5))
    for i in range(cfg.num_layers):
      mask = sliding if cfg.is_sliding(i) else full
      x = layer_cls(cfg, i, name=f'layers_{i}')(x, positions, mask, deterministic, decode)
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.norm_plus_one, 'embed', dtype,
                cfg.weight_dtype, name='decoder_norm')(x)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = embedder.attend(x)  # [batch, length, vocab]
    else:
      logits = Dense(cfg.vocab_size, ('embed', 'vocab'), False, jnp.float32,
                     cfg.weight_dtype, name='logits_dense')(x)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


class DecoderOnlyTransformer(nn.Module):
  """A decoder-only LM with T5X's `DecoderOnly` network interface."""
  config: DecoderOnlyConfig

  @nn.compact
  def __call__(self, decoder_input_tokens: Array, decoder_target_tokens: Optional[Array] = None,
               *, enable_dropout: bool = True, decoder_segment_ids: Optional[Array] = None,
               decoder_positions: Optional[Array] = None,
               decoder_causal_attention: Optional[Array] = None,
               decode: bool = False) -> Array:
    """Logits [batch, length, vocab] for the tokens fed at each position.

    `decoder_target_tokens` is accepted for T5X compatibility but not read
    (no id marks padding; see the module docstring).
    """
    del decoder_target_tokens
    tokens = jnp.asarray(decoder_input_tokens)
    if tokens.ndim != 2:
      raise ValueError(f'decoder_input_tokens must be [batch, length], got {tokens.shape}')
    if decoder_positions is None:
      if decode:
        raise ValueError('decode=True needs decoder_positions (the cache indices)')
      decoder_positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return Decoder(self.config, name='decoder')(
        tokens, jnp.asarray(decoder_positions, jnp.int32), decoder_segment_ids,
        decoder_causal_attention, not enable_dropout, decode)
