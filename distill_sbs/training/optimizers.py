"""Optimizers (optax) with T5X's defaults and learning-rate schedules.

All schedules map an int step to a float learning rate and are gin
configurable, e.g. in gin:

  OPTIMIZER = @optimizers.adafactor()
  optimizers.adafactor.learning_rate = @optimizers.rsqrt_decay()
  optimizers.rsqrt_decay.warmup_steps = 1000
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import gin
import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
LearningRate = Union[float, Schedule]

_MODULE = 'distill_sbs.training.optimizers'


@gin.configurable(module=_MODULE)
def constant(value: float = 1e-3) -> Schedule:
  return optax.constant_schedule(value)


@gin.configurable(module=_MODULE)
def rsqrt_decay(base_learning_rate: float = 1.0, warmup_steps: int = 10000,
                linear_warmup: bool = False) -> Schedule:
  """T5X's `constant * rsqrt_decay`: base / sqrt(max(step, warmup_steps)).

  With `linear_warmup`, the rate rises linearly from 0 to its plateau value
  over `warmup_steps` first (T5X's `constant * linear_warmup * rsqrt_decay`).
  """
  if warmup_steps <= 0:
    raise ValueError(f'rsqrt_decay.warmup_steps must be positive, got {warmup_steps}')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = base_learning_rate / jnp.sqrt(jnp.maximum(step, float(warmup_steps)))
    if linear_warmup:
      lr = lr * jnp.minimum(1.0, step / warmup_steps)
    return lr
  return schedule


@gin.configurable(module=_MODULE)
def linear(init_value: float = 1e-3, end_value: float = 0.0, decay_steps: int = 10000,
           warmup_steps: int = 0) -> Schedule:
  """Linear warm-up from 0 (optional), then linear decay to `end_value`."""
  decay = optax.linear_schedule(init_value, end_value, max(decay_steps - warmup_steps, 1))
  if not warmup_steps:
    return decay
  warm = optax.linear_schedule(0.0, init_value, warmup_steps)
  return optax.join_schedules([warm, decay], [warmup_steps])


@gin.configurable(module=_MODULE)
def cosine(init_value: float = 1e-3, decay_steps: int = 10000, warmup_steps: int = 0,
           end_value: float = 0.0) -> Schedule:
  """Linear warm-up from 0 (optional), then cosine decay to `end_value`."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup_steps else init_value, peak_value=init_value,
      warmup_steps=warmup_steps, decay_steps=max(decay_steps, warmup_steps + 1),
      end_value=end_value)


@dataclasses.dataclass(frozen=True)
class OptimizerDef:
  """An optax transformation plus its learning-rate schedule (for logging).

  Quacks like `optax.GradientTransformation` (`init` / `update`).
  """
  tx: optax.GradientTransformation
  learning_rate: Schedule

  def init(self, params: Any) -> Any:
    return self.tx.init(params)

  def update(self, updates: Any, state: Any, params: Any = None) -> Any:
    return self.tx.update(updates, state, params)


def _schedule(learning_rate: Optional[LearningRate]) -> Schedule:
  if learning_rate is None:
    return rsqrt_decay()
  if callable(learning_rate):
    return learning_rate
  return optax.constant_schedule(float(learning_rate))


@gin.configurable(module=_MODULE)
def adafactor(learning_rate: Optional[LearningRate] = None, *, decay_rate: float = 0.8,
              factored: bool = True, multiply_by_parameter_scale: bool = True,
              clipping_threshold: Optional[float] = 1.0, min_dim_size_to_factor: int = 128,
              momentum: Optional[float] = None, weight_decay_rate: Optional[float] = None,
              eps: float = 1e-30, global_norm_clip: Optional[float] = None
              ) -> OptimizerDef:
  """Adafactor with T5X's defaults (default schedule: `rsqrt_decay()`)."""
  schedule = _schedule(learning_rate)
  tx = optax.adafactor(
      learning_rate=schedule, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum,
      weight_decay_rate=weight_decay_rate, eps=eps, factored=factored)
  if global_norm_clip:
    tx = optax.chain(optax.clip_by_global_norm(global_norm_clip), tx)
  return OptimizerDef(tx, schedule)


@gin.configurable(module=_MODULE)
def adamw(learning_rate: LearningRate = 1e-3, *, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0,
          global_norm_clip: Optional[float] = 1.0) -> OptimizerDef:
  """AdamW with optional global-norm gradient clipping."""
  schedule = _schedule(learning_rate)
  tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  if global_norm_clip:
    tx = optax.chain(optax.clip_by_global_norm(global_norm_clip), tx)
  return OptimizerDef(tx, schedule)


@gin.configurable(module=_MODULE)
def sgd(learning_rate: LearningRate = 1e-2, momentum: Optional[float] = None
        ) -> OptimizerDef:
  schedule = _schedule(learning_rate)
  return OptimizerDef(optax.sgd(schedule, momentum=momentum), schedule)


def as_optimizer_def(optimizer: Any) -> OptimizerDef:
  """Accepts an `OptimizerDef` or a bare optax transformation (lr unknown → 0)."""
  if isinstance(optimizer, OptimizerDef):
    return optimizer
  if hasattr(optimizer, 'init') and hasattr(optimizer, 'update'):
    return OptimizerDef(optimizer, optax.constant_schedule(0.0))
  raise TypeError(f'optimizer_def must be an OptimizerDef or an optax '
                  f'GradientTransformation, got {type(optimizer).__name__}')
