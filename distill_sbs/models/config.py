"""`T5Config`: the frozen hyper-parameters of the T5 network (T5X field names)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence, Union

import gin
import jax.numpy as jnp
from flax import linen as nn

DTypeLike = Union[str, Any]

# Activation names usable in `mlp_activations` ('gelu' is the tanh
# approximation as in T5X / flax and HF's 'gelu_new'; 'gelu_exact' is erf GELU).
ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    'linear': lambda x: x,
    'relu': nn.relu,
    'gelu': lambda x: nn.gelu(x, approximate=True),
    'gelu_exact': lambda x: nn.gelu(x, approximate=False),
    'silu': nn.silu,
    'swish': nn.silu,
}

REMAT_POLICIES = ('none', 'full', 'minimal')
ATTENTION_KERNELS = ('einsum', 'jax')

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def canonical_dtype(dtype: DTypeLike, field: str = 'dtype') -> Any:
  """'bfloat16' / jnp.bfloat16 / np.dtype -> a jnp scalar type."""
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f'T5Config.{field}: unknown dtype {dtype!r}; '
                       f'expected one of {sorted(_DTYPES)}')
    return _DTYPES[dtype]
  name = jnp.dtype(dtype).name
  if name not in _DTYPES:
    raise ValueError(f'T5Config.{field}: unsupported dtype {name!r}')
  return _DTYPES[name]


def activation_fn(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
  if name not in ACTIVATIONS:
    raise ValueError(f'unknown MLP activation {name!r}; expected one of '
                     f'{sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


class ModelConfigBase:
  """What the T5 and decoder-only configs share: dtype handling and the checks
  of the fields both have (frozen dataclasses subclass it)."""

  def _check_common(self, positive: Sequence[str]) -> None:
    """Normalises dtypes to names; validates kernel, remat, sizes, dropout."""
    name = type(self).__name__
    # String dtype names keep the config hashable and printable;
    # `.activation_dtype` / `.weight_dtype` give jnp types.
    for field in ('dtype', 'param_dtype'):
      object.__setattr__(
          self, field, jnp.dtype(canonical_dtype(getattr(self, field), field)).name)
    if self.attention_kernel not in ATTENTION_KERNELS:
      raise ValueError(f'{name}.attention_kernel: unknown {self.attention_kernel!r}; '
                       f'expected one of {ATTENTION_KERNELS}')
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'{name}.remat_policy: unknown {self.remat_policy!r}; '
                       f'expected one of {REMAT_POLICIES}')
    for field in positive:
      if int(getattr(self, field)) <= 0:
        raise ValueError(f'{name}.{field} must be positive, got {getattr(self, field)!r}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'{name}.dropout_rate must be in [0, 1), got {self.dropout_rate!r}')

  @property
  def activation_dtype(self) -> Any:
    return canonical_dtype(self.dtype)

  @property
  def weight_dtype(self) -> Any:
    return canonical_dtype(self.param_dtype, 'param_dtype')

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


@gin.configurable(module='distill_sbs.models')
@dataclasses.dataclass(frozen=True)
class T5Config(ModelConfigBase):
  """Global hyper-parameters of the encoder-decoder (as T5X's `T5Config`).

  `mlp_activations=('gelu', 'linear')` is T5 v1.1 / Flan-T5 (gated GELU),
  `('relu',)` with `logits_via_embedding=True` is the original T5.
  """
  vocab_size: int = 32128
  dtype: DTypeLike = 'float32'  # activations
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.0
  logits_via_embedding: bool = False
  float32_attention_logits: bool = False
  param_dtype: DTypeLike = 'float32'
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  remat_policy: str = 'none'
  # 'einsum' or 'jax' (`jax.nn.dot_product_attention`, fused on accelerators);
  # the same numbers, not a parameter: checkpoints do not change.
  attention_kernel: str = 'einsum'
  # T5X's name: run each stack's layers under one `nn.scan` (compile time does
  # not grow with depth); parameters stack on a leading 'layers' axis.
  scan_layers: bool = False
  # Packed encoder rows whose segments lie inside blocks of this many tokens
  # (`data.packing` with block_lengths={'inputs': n}, which the input pipeline
  # asks for when this is set): the encoder attends per block, the same
  # numbers at a fraction of the [length, length] attention. 0: whole rows.
  # Applies only to packed batches (those with encoder segment ids) longer
  # than a block (a row of at most one block is one block).
  encoder_block_length: int = 0

  def __post_init__(self):
    if int(self.encoder_block_length) < 0:
      raise ValueError(f'T5Config.encoder_block_length must be >= 0 (0: whole rows), '
                       f'got {self.encoder_block_length!r}')
    acts = self.mlp_activations
    if isinstance(acts, str):
      acts = (acts,)
    acts = tuple(acts)
    if not acts:
      raise ValueError('T5Config.mlp_activations must not be empty')
    for a in acts:
      if a not in ACTIVATIONS:
        raise ValueError(f'T5Config.mlp_activations: unknown activation {a!r}; '
                         f'expected one of {sorted(ACTIVATIONS)}')
    object.__setattr__(self, 'mlp_activations', acts)
    self._check_common(('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
                        'relative_attention_num_buckets', 'relative_attention_max_distance'))
    for field in ('num_encoder_layers', 'num_decoder_layers'):
      if int(getattr(self, field)) < 0:
        raise ValueError(f'T5Config.{field} must be >= 0')
