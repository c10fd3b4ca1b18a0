"""The T5 encoder-decoder `Transformer` (T5X's `examples/t5/network.py`).

Parameter tree (T5X names, 2-D kernels, logical axes in brackets):

  token_embedder/embedding                     [vocab, embed]
  encoder/relpos_bias/rel_embedding            [heads, relpos_buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale        [embed]
  encoder/layers_{i}/attention/{query,key,value}/kernel    [embed, joined_kv]
  encoder/layers_{i}/attention/out/kernel                  [joined_kv, embed]
  encoder/layers_{i}/pre_mlp_layer_norm/scale              [embed]
  encoder/layers_{i}/mlp/{wi | wi_0, wi_1}/kernel          [embed, mlp]
  encoder/layers_{i}/mlp/wo/kernel                         [mlp, embed]
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_{i}/{pre_self_attention_layer_norm, self_attention,
                      pre_cross_attention_layer_norm, encoder_decoder_attention,
                      pre_mlp_layer_norm, mlp}
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                  [embed, vocab] (untied only)

With `T5Config.scan_layers` (T5X's name) each stack's layers run under one
`nn.scan` (compile time independent of depth): the parameters of
`{encoder,decoder}/layers_{i}/...` become `{encoder,decoder}/layers/...` with a
leading layer axis (logical axis 'layers', never sharded). `scan_layer_params`
/ `unscan_layer_params` convert between the two trees, and checkpoint loading
(`checkpoint_formats.assign_params`) does it on the fly, so HF / T5X / our
checkpoints load into either layout. (T5X's own scanned layout puts the layer
axis at position 1 of each kernel; ours is position 0.)

Like T5X, packed sequences are handled by segment-id masks (relative position
biases see within-segment distances unchanged), so `*_positions` are accepted
for interface compatibility but not needed.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from distill_sbs.models import layers
from distill_sbs.models.config import T5Config

Array = jnp.ndarray


def _dropout(cfg: T5Config, x: Array, deterministic: bool) -> Array:
  return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
      x, deterministic=deterministic)


def _norm(cfg: T5Config, name: str) -> layers.LayerNorm:
  return layers.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.activation_dtype,
                          param_dtype=cfg.weight_dtype, name=name)


def _attention(cfg: T5Config, name: str, cross: bool = False):
  return layers.MultiHeadDotProductAttention(
      num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=cfg.activation_dtype,
      param_dtype=cfg.weight_dtype, dropout_rate=cfg.dropout_rate,
      float32_logits=cfg.float32_attention_logits, cross=cross,
      kernel=cfg.attention_kernel, name=name)


def _mlp(cfg: T5Config) -> layers.MlpBlock:
  return layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                         intermediate_dropout_rate=cfg.dropout_rate,
                         dtype=cfg.activation_dtype, param_dtype=cfg.weight_dtype,
                         name='mlp')


def _relpos(cfg: T5Config) -> layers.RelativePositionBiases:
  return layers.RelativePositionBiases(
      num_buckets=cfg.relative_attention_num_buckets,
      max_distance=cfg.relative_attention_max_distance, num_heads=cfg.num_heads,
      dtype=cfg.activation_dtype, param_dtype=cfg.weight_dtype, name='relpos_bias')


def _block(cfg: T5Config, x: Array, deterministic: bool, attentions) -> Array:
  """A transformer layer of pre-norm residual sublayers, x ← x + dropout(f(norm(x))):
  the (norm name, attention) pairs in order, then the MLP ('pre_mlp_layer_norm')."""
  mlp = lambda h: _mlp(cfg)(h, deterministic=deterministic)
  for norm_name, sublayer in [*attentions, ('pre_mlp_layer_norm', mlp)]:
    x = _dropout(cfg, sublayer(_norm(cfg, norm_name)(x)), deterministic) + x
  return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


def _maybe_remat(cfg: T5Config, module_cls, static_argnums: tuple[int, ...]):
  if cfg.remat_policy == 'none':
    return module_cls
  policy = None
  if cfg.remat_policy == 'minimal':
    policy = jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
  return nn.remat(module_cls, policy=policy, static_argnums=static_argnums)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP block."""
  config: T5Config

  @nn.compact
  def __call__(self, inputs: Array, encoder_mask: Optional[Array], bias: Array,
               deterministic: bool = False) -> Array:
    cfg = self.config
    # inputs [batch, length, emb]
    return _block(cfg, inputs, deterministic, [
        ('pre_attention_layer_norm', lambda h: _attention(cfg, 'attention')(
            h, h, encoder_mask, bias, deterministic=deterministic))])


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention + cross-attention + MLP block."""
  config: T5Config

  @nn.compact
  def __call__(self, inputs: Array, encoded: Array, decoder_mask: Optional[Array],
               encoder_decoder_mask: Optional[Array], bias: Array,
               deterministic: bool = False, decode: bool = False) -> Array:
    cfg = self.config
    return _block(cfg, inputs, deterministic, [
        ('pre_self_attention_layer_norm', lambda h: _attention(cfg, 'self_attention')(
            h, h, decoder_mask, bias, deterministic=deterministic, decode=decode)),
        ('pre_cross_attention_layer_norm',
         lambda h: _attention(cfg, 'encoder_decoder_attention', cross=True)(
             h, encoded, encoder_decoder_mask, deterministic=deterministic, decode=decode))])


class _ScannedEncoderLayer(EncoderLayer):
  """`EncoderLayer` as an `nn.scan` body: static flags as attributes, (carry, None)."""
  deterministic: bool = True

  def __call__(self, inputs, encoder_mask, bias):  # pylint: disable=arguments-differ
    return super().__call__(inputs, encoder_mask, bias, self.deterministic), None


class _ScannedDecoderLayer(DecoderLayer):
  """`DecoderLayer` as an `nn.scan` body."""
  deterministic: bool = True
  decode: bool = False

  def __call__(self, inputs, encoded, decoder_mask, encoder_decoder_mask, bias):  # pylint: disable=arguments-differ
    return super().__call__(inputs, encoded, decoder_mask, encoder_decoder_mask, bias,
                            self.deterministic, self.decode), None


def _scanned(cfg: T5Config, layer_cls, length: int, num_broadcast: int, cache: bool):
  """`layer_cls` scanned over `length` layers (the carry is the hidden state;
  the other `num_broadcast` arguments are shared), parameters (and the decoding
  cache) stacked on a leading 'layers' axis; remat per layer as configured."""
  if cfg.remat_policy != 'none' and not cache:
    layer_cls = _maybe_remat(cfg, layer_cls, static_argnums=())
  axes = {'params': 0, 'cache': 0} if cache else {'params': 0}
  return nn.scan(layer_cls, variable_axes=axes,
                 split_rngs={'params': True, 'dropout': True},
                 in_axes=(nn.broadcast,) * num_broadcast, length=length,
                 metadata_params={nn.PARTITION_NAME: 'layers'})


_LAYER_KEY = re.compile(r'layers_(\d+)$')


def scan_layer_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """`{encoder,decoder}/layers_{i}/...` → `{encoder,decoder}/layers/...`, each
  leaf stacked on a new leading axis (the `scan_layers=True` tree)."""
  out = {}
  for stack, sub in params.items():
    if not isinstance(sub, Mapping) or not any(_LAYER_KEY.match(k) for k in sub):
      out[stack] = sub
      continue
    idx = sorted(int(_LAYER_KEY.match(k).group(1)) for k in sub if _LAYER_KEY.match(k))
    if idx != list(range(len(idx))):
      raise ValueError(f'scan_layer_params: {stack}/ has layers {idx}, not 0..{len(idx) - 1}')
    layers_ = [sub[f'layers_{i}'] for i in idx]
    rest = {k: v for k, v in sub.items() if not _LAYER_KEY.match(k)}
    rest['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers_)
    out[stack] = rest
  return out


def unscan_layer_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of `scan_layer_params`."""
  out = {}
  for stack, sub in params.items():
    if not isinstance(sub, Mapping) or 'layers' not in sub:
      out[stack] = sub
      continue
    n = jax.tree.leaves(sub['layers'])[0].shape[0]
    rest = {k: v for k, v in sub.items() if k != 'layers'}
    for i in range(n):
      rest[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], sub['layers'])
    out[stack] = rest
  return out


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoder_input_tokens: Array, encoder_mask: Optional[Array] = None,
               deterministic: bool = False) -> Array:
    cfg = self.config
    length = encoder_input_tokens.shape[-1]
    bias = _relpos(cfg)(length, length, True)  # [1, h, len, len]
    x = self.shared_embedding(encoder_input_tokens.astype(jnp.int32))
    x = _dropout(cfg, x, deterministic).astype(cfg.activation_dtype)
    if cfg.scan_layers:
      x = _scanned(cfg, _ScannedEncoderLayer, cfg.num_encoder_layers, 2, cache=False)(
          config=cfg, deterministic=deterministic, name='layers')(x, encoder_mask, bias)[0]
    else:
      layer_cls = _maybe_remat(cfg, EncoderLayer, static_argnums=(4,))
      for i in range(cfg.num_encoder_layers):
        x = layer_cls(config=cfg, name=f'layers_{i}')(x, encoder_mask, bias, deterministic)
    x = _norm(cfg, 'encoder_norm')(x)
    return nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array,
               decoder_positions: Optional[Array] = None,
               decoder_mask: Optional[Array] = None,
               encoder_decoder_mask: Optional[Array] = None,
               deterministic: bool = False, decode: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    del decoder_positions  # see the module docstring
    cfg = self.config
    length = (max_decode_length if decode and max_decode_length
              else decoder_input_tokens.shape[-1])
    if decode and self.has_variable('cache', 'cache_index'):
      # A decoding step: only the current query row [1, h, 1, len]; the
      # position is the decoder's own `cache_index` (T5X's cache_map skips it).
      index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
      bias = _relpos(cfg)(1, length, False, query_position=index.value)
      index.value = index.value + 1
    else:
      if decode:  # the cache-initialising call
        self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
      bias = _relpos(cfg)(length, length, False)  # [1, h, len, len], computed once
    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    y = _dropout(cfg, y, deterministic).astype(cfg.activation_dtype)
    # Remat only for training; the decode path mutates the cache.
    if cfg.scan_layers:
      y = _scanned(cfg, _ScannedDecoderLayer, cfg.num_decoder_layers, 4, cache=decode)(
          config=cfg, deterministic=deterministic, decode=decode, name='layers')(
              y, encoded, decoder_mask, encoder_decoder_mask, bias)[0]
    else:
      layer_cls = DecoderLayer if decode else _maybe_remat(cfg, DecoderLayer, (6, 7))
      for i in range(cfg.num_decoder_layers):
        y = layer_cls(config=cfg, name=f'layers_{i}')(
            y, encoded, decoder_mask, encoder_decoder_mask, bias, deterministic, decode)
    y = _norm(cfg, 'decoder_norm')(y)
    y = _dropout(cfg, y, deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y)  # [batch, len, vocab]
      logits = logits / jnp.sqrt(jnp.float32(y.shape[-1]))
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, dtype=jnp.float32,
                                   param_dtype=cfg.weight_dtype,
                                   kernel_axes=('embed', 'vocab'),
                                   name='logits_dense')(y)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


class Transformer(nn.Module):
  """An encoder-decoder T5 with T5X's network interface."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.shared_embedding = layers.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=cfg.activation_dtype,
        param_dtype=cfg.weight_dtype, attend_dtype=jnp.float32, name='token_embedder')
    self.encoder = Encoder(config=cfg, shared_embedding=self.shared_embedding)
    self.decoder = Decoder(config=cfg, shared_embedding=self.shared_embedding)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array] = None,
             enable_dropout: bool = True) -> Array:
    """[batch, len] tokens -> encoded [batch, len, emb]."""
    cfg = self.config
    if encoder_input_tokens.ndim != 2:
      raise ValueError(f'encoder_input_tokens must be [batch, length], got shape '
                       f'{encoder_input_tokens.shape}')
    block = int(cfg.encoder_block_length)
    batch, length = encoder_input_tokens.shape
    if not block or encoder_segment_ids is None or length <= block:  # one block: the row
      return self._encode_rows(encoder_input_tokens, encoder_segment_ids, enable_dropout)
    # Packed rows whose segments lie inside blocks (data.packing): the encoder
    # is position-wise but for attention, so running it on the blocks as rows
    # is attention within blocks, its mask and relative-position bias built
    # at [block, block].
    if length % block:
      raise ValueError(f'T5Config.encoder_block_length={block} does not divide the '
                       f'encoder length {length}')
    encoded = self._encode_rows(encoder_input_tokens.reshape(-1, block),  # [b·n, block]
                                encoder_segment_ids.reshape(-1, block), enable_dropout)
    return encoded.reshape(batch, length, -1)  # [b, length, emb]

  def _encode_rows(self, tokens: Array, segment_ids: Optional[Array],
                   enable_dropout: bool) -> Array:
    """[rows, len] tokens (whole attention spans) -> [rows, len, emb]."""
    dtype = self.config.activation_dtype
    mask = layers.make_attention_mask(tokens > 0, tokens > 0, dtype=dtype)
    if segment_ids is not None:
      mask = layers.combine_masks(
          mask, layers.make_attention_mask(segment_ids, segment_ids, jnp.equal, dtype=dtype),
          dtype=dtype)
    return self.encoder(tokens, mask, deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array,
             decoder_input_tokens: Array, decoder_target_tokens: Array,
             encoder_segment_ids: Optional[Array] = None,
             decoder_segment_ids: Optional[Array] = None,
             decoder_positions: Optional[Array] = None, enable_dropout: bool = True,
             decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    """Decoder logits [batch, target_len, vocab] given the encoder output."""
    dtype = self.config.activation_dtype
    if decode:
      decoder_mask = None
      encoder_decoder_mask = layers.make_attention_mask(
          jnp.ones_like(decoder_target_tokens), encoder_input_tokens > 0, dtype=dtype)
    else:
      decoder_mask = layers.make_decoder_mask(decoder_target_tokens, dtype=dtype,
                                              decoder_segment_ids=decoder_segment_ids)
      encoder_decoder_mask = layers.make_attention_mask(
          decoder_target_tokens > 0, encoder_input_tokens > 0, dtype=dtype)
    if encoder_segment_ids is not None:
      if decode:
        raise ValueError('During decoding, packing should not be used but '
                         '`encoder_segment_ids` was passed to `Transformer.decode`.')
      encoder_decoder_mask = layers.combine_masks(
          encoder_decoder_mask,
          layers.make_attention_mask(decoder_segment_ids, encoder_segment_ids,
                                     jnp.equal, dtype=dtype), dtype=dtype)
    return self.decoder(encoded, decoder_input_tokens=decoder_input_tokens,
                        decoder_positions=decoder_positions, decoder_mask=decoder_mask,
                        encoder_decoder_mask=encoder_decoder_mask,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None,
               decoder_positions: Optional[Array] = None, *,
               enable_dropout: bool = True, decode: bool = False) -> Array:
    """Logits [batch, target_len, vocab] (decoder inputs = targets shifted right)."""
    del encoder_positions
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids=encoder_segment_ids,
                          enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids=encoder_segment_ids,
                       decoder_segment_ids=decoder_segment_ids,
                       decoder_positions=decoder_positions,
                       enable_dropout=enable_dropout, decode=decode)
