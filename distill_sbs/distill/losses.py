"""Pure loss functions: cross-entropy with z-loss, α multi-task, top-k KL.

Conventions (as T5X): logits [batch, length, vocab]; targets [batch, length];
weights [batch, length] (0 on padding). Per-token losses are summed with the
weights and divided by a `loss_normalizing_factor`, which is a number, None
(plain sum) or one of `NORMALIZERS`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Protocol, Union

import jax
import jax.numpy as jnp

Array = jnp.ndarray
Batch = Mapping[str, Array]

NUM_REAL_TARGET_TOKENS = 'NUM_REAL_TARGET_TOKENS'
NUM_TOTAL_TARGET_TOKENS = 'NUM_TOTAL_TARGET_TOKENS'
AVERAGE_PER_SEQUENCE = 'AVERAGE_PER_SEQUENCE'
# Exact multi-task objective: sum over tasks of (weighted token sum / that
# task's real-token count); needs `decoder_task_ids` [batch, length].
PER_TASK_TOKENS = 'PER_TASK_TOKENS'
NORMALIZERS = (NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE,
               PER_TASK_TOKENS)


class LossFn(Protocol):
  """What the trainer calls: (logits, batch) -> (scalar loss, metrics)."""

  def __call__(self, logits: Array, batch: Batch) -> tuple[Array, dict[str, Array]]:
    ...


def token_cross_entropy(logits: Array, targets: Array, *, z_loss: float = 0.0,
                        label_smoothing: float = 0.0) -> tuple[Array, Array]:
  """Per-token CE and z-loss, T5X semantics.

  Label smoothing spreads `label_smoothing` over the vocabulary and subtracts
  the normalising constant so a perfect prediction has zero loss.

  Returns:
    (loss [batch, length] including z-loss, z_loss [batch, length]).
  """
  vocab = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  normalizing_constant = -(confidence * jnp.log(confidence) +
                           (vocab - 1) * low * jnp.log(low + 1e-20))
  soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low  # [b, l, v]
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [b, l]
  log_softmax = logits - log_z[..., None]
  loss = -jnp.sum(soft * log_softmax, axis=-1) - normalizing_constant
  zl = z_loss * jnp.square(log_z)
  return loss + zl, zl


def normalizing_factor(weights: Array, loss_normalizing_factor: Union[None, float, str]
                       ) -> tuple[Optional[Array], Array]:
  """Returns (divisor or None, possibly rescaled weights)."""
  if loss_normalizing_factor is None:
    return None, weights
  if isinstance(loss_normalizing_factor, str):
    if loss_normalizing_factor == NUM_REAL_TARGET_TOKENS:
      return jnp.sum(weights > 0).astype(jnp.float32), weights
    if loss_normalizing_factor == NUM_TOTAL_TARGET_TOKENS:
      return jnp.asarray(weights.size, jnp.float32), weights
    if loss_normalizing_factor == AVERAGE_PER_SEQUENCE:
      per_seq = jnp.sum(weights, axis=-1, keepdims=True)
      w = jnp.where(per_seq > 0, weights / jnp.maximum(per_seq, 1e-9), 0.0)
      return jnp.asarray(weights.shape[0], jnp.float32), w
    raise ValueError(f'unknown loss_normalizing_factor {loss_normalizing_factor!r}; '
                     f'use a number, None or one of {NORMALIZERS}')
  return jnp.asarray(loss_normalizing_factor, jnp.float32), weights


def per_task_mean(per_token: Array, weights: Array, task_ids: Array,
                  num_tasks: int = 2) -> Array:
  """Σ_t Σ_{tokens of task t} w·x / N_t: the paper's α·L_label + (1−α)·L_rationale
  when the weights are α on label tokens and 1−α on rationale tokens.

  Args:
    per_token: [batch, length] per-token losses.
    weights: [batch, length] task weight on real tokens, 0 on padding.
    task_ids: [batch, length] task index per token (0 label, 1 rationale).
  """
  total = jnp.zeros((), jnp.float32)
  for t in range(num_tasks):
    in_t = (task_ids == t) & (weights > 0)
    n_t = jnp.sum(in_t).astype(jnp.float32)
    total += jnp.sum(jnp.where(in_t, per_token * weights, 0.0)) / jnp.maximum(n_t, 1.0)
  return total


def weighted_cross_entropy(logits: Array, targets: Array, weights: Optional[Array], *,
                           label_smoothing: float = 0.0, z_loss: float = 0.0,
                           loss_normalizing_factor: Union[None, float, str] = None,
                           task_ids: Optional[Array] = None
                           ) -> tuple[Array, Array, Array]:
  """T5X's `compute_weighted_cross_entropy`: (loss, z_loss, weight_sum)."""
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  tok, zl = token_cross_entropy(logits, targets, z_loss=z_loss,
                                label_smoothing=label_smoothing)
  if loss_normalizing_factor == PER_TASK_TOKENS:
    if task_ids is None:
      raise ValueError('loss_normalizing_factor=PER_TASK_TOKENS needs the batch feature '
                       "'decoder_task_ids' (use the paired feature converter)")
    return (per_task_mean(tok, weights, task_ids), per_task_mean(zl, weights, task_ids),
            jnp.sum(weights))
  divisor, weights = normalizing_factor(weights, loss_normalizing_factor)
  total = jnp.sum(tok * weights)
  total_z = jnp.sum(zl * weights)
  if divisor is not None:
    total, total_z = total / divisor, total_z / divisor
  return total, total_z, jnp.sum(weights)


@dataclasses.dataclass(frozen=True)
class CrossEntropyLoss:
  """The standard objective; `decoder_loss_weights` carries padding masks and
  the paired converter's per-token α / (1−α) weights."""
  label_smoothing: float = 0.0
  z_loss: float = 1e-4
  loss_normalizing_factor: Any = NUM_REAL_TARGET_TOKENS

  def __call__(self, logits: Array, batch: Batch) -> tuple[Array, dict[str, Array]]:
    loss, zl, wsum = weighted_cross_entropy(
        logits, batch['decoder_target_tokens'], batch.get('decoder_loss_weights'),
        label_smoothing=self.label_smoothing, z_loss=self.z_loss,
        loss_normalizing_factor=self.loss_normalizing_factor,
        task_ids=batch.get('decoder_task_ids'))
    return loss, {'loss': loss, 'z_loss': zl, 'weight_sum': wsum}
