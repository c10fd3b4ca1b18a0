"""`DecoderOnlyConfig`: frozen hyper-parameters of the decoder-only network.

One config covers the Llama family (Llama 2/3, SmolLM2; Qwen2/2.5 are Llama
with q/k/v biases), Qwen3 (per-head q/k RMS norms) and Gemma 3 text ((1 + w)
RMS norms with pre- and post-norms, √d embedding scale, GeGLU, the
sliding-window / global layer pattern with two RoPE bases, query pre-attention
scaling). `model_type` is the Hugging Face `model_type` it reads from / writes to.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import gin
import numpy as np

from distill_sbs.models.config import ACTIVATIONS, DTypeLike, ModelConfigBase

MODEL_TYPES = ('llama', 'qwen2', 'qwen3', 'gemma3_text')
ROPE_TYPES = ('default', 'linear', 'llama3')
LAYER_TYPES = ('full_attention', 'sliding_attention')


@gin.configurable(module='distill_sbs.models')
@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig(ModelConfigBase):
  """Global hyper-parameters of `DecoderOnlyTransformer` (HF semantics).

  RoPE: `rope_theta` with `rope_type` 'default' / 'linear' (`rope_factor`) /
  'llama3' (`rope_factor`, `rope_low_freq_factor`, `rope_high_freq_factor`,
  `rope_original_max_position_embeddings`); sliding-window layers (Gemma 3)
  use `rope_local_theta` with the default rope type.
  `layer_types` (one of LAYER_TYPES per layer; empty = all full attention):
  a sliding layer lets query position q see keys k with q - k < sliding_window.
  """
  model_type: str = 'llama'
  vocab_size: int = 32000
  emb_dim: int = 512
  num_heads: int = 8
  num_kv_heads: int = 8
  num_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activation: str = 'silu'  # gated: act(x W_0) * (x W_1); 'gelu' is tanh GELU
  layer_norm_epsilon: float = 1e-6
  norm_plus_one: bool = False  # Gemma: x * (1 + w)
  post_norms: bool = False  # Gemma: post-attention / post-MLP norms
  qk_norm: bool = False  # Qwen3 / Gemma 3: RMS norm of each q / k head
  scale_embeddings: bool = False  # Gemma: embeddings * sqrt(emb_dim)
  qkv_bias: bool = False
  out_bias: bool = False
  query_pre_attn_scalar: Optional[float] = None  # logits scale: this ** -0.5, else head_dim
  rope_theta: float = 10000.0
  rope_local_theta: Optional[float] = None
  rope_type: str = 'default'
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position_embeddings: int = 8192
  sliding_window: Optional[int] = None
  layer_types: Sequence[str] = ()
  logits_via_embedding: bool = True  # tied input / output embeddings
  max_position_embeddings: int = 2048
  pad_id: int = 0
  eos_ids: Sequence[int] = (1,)
  bos_id: Optional[int] = None
  dtype: DTypeLike = 'float32'
  param_dtype: DTypeLike = 'float32'
  dropout_rate: float = 0.0
  float32_attention_logits: bool = True
  remat_policy: str = 'none'
  # 'einsum' or 'jax' (`jax.nn.dot_product_attention`, grouped kv heads, fused
  # on accelerators); the same numbers, not a parameter.
  attention_kernel: str = 'einsum'

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f'DecoderOnlyConfig.model_type: unknown {self.model_type!r}; '
                       f'expected one of {MODEL_TYPES}')
    if self.mlp_activation not in ACTIVATIONS:
      raise ValueError(f'DecoderOnlyConfig.mlp_activation: unknown {self.mlp_activation!r}')
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f'DecoderOnlyConfig.rope_type: unknown {self.rope_type!r}; '
                       f'expected one of {ROPE_TYPES}')
    self._check_common(('vocab_size', 'emb_dim', 'num_heads', 'num_kv_heads', 'head_dim',
                        'mlp_dim'))
    eos = self.eos_ids
    eos = (eos,) if isinstance(eos, int) else tuple(int(e) for e in eos)
    object.__setattr__(self, 'eos_ids', eos)
    lt = self.layer_types
    lt = (lt,) if isinstance(lt, str) else tuple(lt)
    object.__setattr__(self, 'layer_types', lt)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'DecoderOnlyConfig: num_heads {self.num_heads} is not a multiple '
                       f'of num_kv_heads {self.num_kv_heads}')
    if lt and len(lt) != self.num_layers:
      raise ValueError(f'DecoderOnlyConfig.layer_types has {len(lt)} entries for '
                       f'{self.num_layers} layers')
    for t in lt:
      if t not in LAYER_TYPES:
        raise ValueError(f'DecoderOnlyConfig.layer_types: unknown {t!r}')
    if 'sliding_attention' in lt and not self.sliding_window:
      raise ValueError('DecoderOnlyConfig: sliding_attention layers need sliding_window')

  @property
  def eos_id(self) -> int:
    return self.eos_ids[0]

  def is_sliding(self, layer: int) -> bool:
    return bool(self.layer_types) and self.layer_types[layer] == 'sliding_attention'

  def attention_scale(self) -> float:
    return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def inv_freq(self, layer: int) -> np.ndarray:
    """RoPE inverse frequencies [head_dim // 2] of `layer` (float64, as HF's)."""
    d = self.head_dim
    sliding = self.is_sliding(layer) and self.rope_local_theta is not None
    theta = self.rope_local_theta if sliding else self.rope_theta
    inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    if sliding or self.rope_type == 'default':
      return inv
    if self.rope_type == 'linear':
      return inv / self.rope_factor
    # llama3: keep high frequencies, divide low ones, interpolate in between.
    factor, low, high = self.rope_factor, self.rope_low_freq_factor, self.rope_high_freq_factor
    old = self.rope_original_max_position_embeddings
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, out)

