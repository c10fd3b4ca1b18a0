"""Pure loss functions: cross-entropy with z-loss, the step-by-step α objective, top-k KL.

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
NORMALIZERS = (NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE)
# The former normaliser of the step-by-step objective; the objective (and its α)
# now lives in `StepByStepLoss`.
PER_TASK_TOKENS = 'PER_TASK_TOKENS'
LABEL_TASK_ID = 0
RATIONALE_TASK_ID = 1


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
                  task_weights: tuple[float, ...]) -> tuple[Array, Array, Array]:
  """Σ_t a_t · mean_t / Σ_{t present} a_t, where mean_t is the weighted mean of
  `per_token` over the tokens of task t in the batch.

  With task_weights (α, 1−α) and task ids 0 (label) / 1 (rationale) this is
  the paper's α·L_label + (1−α)·L_rationale. A batch holding one task only
  (e.g. a label task at evaluation) gives that task's mean.

  Args:
    per_token: [batch, length] per-token losses.
    weights: [batch, length] loss weights (1 on real tokens, 0 on padding).
    task_ids: [batch, length] task index per token.
    task_weights: a_t per task index.
  Returns:
    (objective, means [num_tasks], token counts [num_tasks]).
  """
  means, counts = [], []
  for t in range(len(task_weights)):
    w_t = jnp.where(task_ids == t, weights, 0.0)  # [batch, length]
    n_t = jnp.sum(w_t)
    means.append(jnp.sum(per_token * w_t) / jnp.maximum(n_t, 1e-9))
    counts.append(n_t)
  means, counts = jnp.stack(means), jnp.stack(counts)  # [num_tasks]
  a = jnp.where(counts > 0, jnp.asarray(task_weights, jnp.float32), 0.0)
  return jnp.sum(a * means) / jnp.maximum(jnp.sum(a), 1e-9), means, counts


def _no_per_task_tokens(loss_normalizing_factor: Any) -> None:
  if loss_normalizing_factor == PER_TASK_TOKENS:
    raise ValueError("loss_normalizing_factor='PER_TASK_TOKENS' is gone: the step-by-step "
                     'objective is losses.StepByStepLoss(alpha=...) (gin: LOSS_FN = '
                     '@losses.StepByStepLoss(), losses.StepByStepLoss.alpha = %ALPHA)')


def weighted_cross_entropy(logits: Array, targets: Array, weights: Optional[Array], *,
                           label_smoothing: float = 0.0, z_loss: float = 0.0,
                           loss_normalizing_factor: Union[None, float, str] = None
                           ) -> tuple[Array, Array, Array]:
  """T5X's `compute_weighted_cross_entropy`: (loss, z_loss, weight_sum)."""
  _no_per_task_tokens(loss_normalizing_factor)
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  tok, zl = token_cross_entropy(logits, targets, z_loss=z_loss,
                                label_smoothing=label_smoothing)
  divisor, weights = normalizing_factor(weights, loss_normalizing_factor)
  total = jnp.sum(tok * weights)
  total_z = jnp.sum(zl * weights)
  if divisor is not None:
    total, total_z = total / divisor, total_z / divisor
  return total, total_z, jnp.sum(weights)


@dataclasses.dataclass(frozen=True)
class CrossEntropyLoss:
  """The standard objective; `decoder_loss_weights` carries the padding mask."""
  label_smoothing: float = 0.0
  z_loss: float = 1e-4
  loss_normalizing_factor: Any = NUM_REAL_TARGET_TOKENS

  def __call__(self, logits: Array, batch: Batch) -> tuple[Array, dict[str, Array]]:
    loss, zl, wsum = weighted_cross_entropy(
        logits, batch['decoder_target_tokens'], batch.get('decoder_loss_weights'),
        label_smoothing=self.label_smoothing, z_loss=self.z_loss,
        loss_normalizing_factor=self.loss_normalizing_factor)
    return loss, {'loss': loss, 'z_loss': zl, 'weight_sum': wsum}


@dataclasses.dataclass(frozen=True)
class StepByStepLoss:
  """Distilling step-by-step: α·L_label + (1−α)·L_rationale (Hsieh et al. 2023).

  L_label is the mean token cross-entropy (+ z-loss) over the batch's label
  tokens (`decoder_task_ids` 0, `decoder_loss_weights` > 0) and L_rationale the
  same over its rationale tokens (task id 1). Both are per-token means over
  the batch, so the objective does not depend on how the rows were formed
  (paired rows, packed rows holding pieces of many examples). A batch holding
  one task only gives that task's mean. Without `decoder_task_ids` every token
  counts as a label token (plain cross-entropy).
  """
  alpha: float = 0.5
  label_smoothing: float = 0.0
  z_loss: float = 1e-4

  def __post_init__(self):
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f'StepByStepLoss.alpha={self.alpha} must be in [0, 1]')

  def __call__(self, logits: Array, batch: Batch) -> tuple[Array, dict[str, Array]]:
    targets = batch['decoder_target_tokens']                     # [batch, length]
    weights = batch.get('decoder_loss_weights')
    weights = ((targets > 0) if weights is None else weights).astype(jnp.float32)
    task_ids = batch.get('decoder_task_ids')
    if task_ids is None:
      task_ids = jnp.zeros(targets.shape, jnp.int32)
    tok, zl = token_cross_entropy(logits, targets, z_loss=self.z_loss,
                                  label_smoothing=self.label_smoothing)
    task_weights = (self.alpha, 1.0 - self.alpha)
    loss, means, counts = per_task_mean(tok, weights, task_ids, task_weights)
    z, _, _ = per_task_mean(zl, weights, task_ids, task_weights)
    return loss, {'loss': loss, 'z_loss': z, 'weight_sum': jnp.sum(weights),
                  'label_loss': means[LABEL_TASK_ID],
                  'rationale_loss': means[RATIONALE_TASK_ID],
                  'label_tokens': counts[LABEL_TASK_ID],
                  'rationale_tokens': counts[RATIONALE_TASK_ID]}


# ----------------------------------------------------------------------------
# FIRST: top-k KL distillation.
#
# Teacher distribution over the k stored ids (log-probs `lp`, temperature T):
#   rest_bucket=False: q_i = softmax_i(lp_i / T)   (re-normalised over the k ids)
#   rest_bucket=True : a (k+1)-way distribution whose last entry is the "rest"
#     r = 1 − Σ_i exp(lp_i) of the *untempered* stored distribution; the
#     temperature is then applied to that (k+1)-way distribution:
#       q = softmax([lp_1, …, lp_k, log r] / T).
#     At T = 1 this is exactly the stored top-k mass plus its complement.
# Student (logits z, temperature S, full-vocabulary P = softmax(z / S)):
#   rest_bucket=False: s_i = P[id_i] / Σ_j P[id_j] (re-normalised over the k ids)
#   rest_bucket=True : s_i = P[id_i], s_rest = 1 − Σ_i P[id_i].
# KL(q‖s) = Σ q (log q − log s), summed over the k (or k+1) entries.
# ----------------------------------------------------------------------------

_MIN_LOGPROB = -1e4   # floor for stored log-probs (−inf / float16 underflow)
# Stored entries at or below this log-prob are absent (a teacher that returned
# fewer than k alternatives pads with id 0 / −1e4): the student ignores them.
ABSENT_LOGPROB = -1e3
_TINY = 1e-30


def _log1mexp(x: Array) -> Array:
  """log(1 − exp(x)) for x < 0, numerically stable."""
  return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def teacher_topk_log_probs(topk_logprobs: Array, *, temperature: float = 1.0,
                           rest_bucket: bool = False) -> Array:
  """Log of the temperature-scaled teacher distribution (see module notes).

  Args:
    topk_logprobs: [..., k] stored teacher log-probs.
  Returns:
    [..., k] (or [..., k+1] with the rest bucket last) log-probabilities.
  """
  lp = jnp.maximum(topk_logprobs, _MIN_LOGPROB)
  if rest_bucket:
    mass = jax.nn.logsumexp(lp, axis=-1, keepdims=True)  # [..., 1]
    # Stored top-k mass can exceed 1 by float16 rounding: keep the rest ≥ tiny.
    log_rest = _log1mexp(jnp.minimum(mass, jnp.log1p(-1e-6)))
    lp = jnp.concatenate([lp, log_rest], axis=-1)
  return jax.nn.log_softmax(lp / temperature, axis=-1)


def student_topk_log_probs(student_logits: Array, topk_ids: Array, *,
                           temperature: float = 1.0, rest_bucket: bool = False,
                           present: Optional[Array] = None) -> Array:
  """Log of the student distribution over the teacher's k ids (see module notes).

  Args:
    student_logits: [..., vocab].
    topk_ids: [..., k] int ids (distinct per position on real tokens).
    present: optional [..., k] bool; absent entries get log-prob −1e9 and are
      left out of the re-normalisation and of the rest bucket's complement.
  Returns:
    [..., k] (or [..., k+1] with the rest bucket last) log-probabilities.
  """
  z = student_logits / temperature
  picked = jnp.take_along_axis(z, topk_ids, axis=-1)  # [..., k]
  if present is not None:
    picked = jnp.where(present, picked, -1e9)
  if not rest_bucket:
    return jax.nn.log_softmax(picked, axis=-1)
  log_p = picked - jax.nn.logsumexp(z, axis=-1, keepdims=True)  # [..., k]
  mass = jax.nn.logsumexp(log_p, axis=-1, keepdims=True)  # [..., 1]
  log_rest = _log1mexp(jnp.minimum(mass, -1e-7))
  return jnp.concatenate([log_p, log_rest], axis=-1)


def topk_kl_per_token(student_logits: Array, topk_ids: Array, topk_logprobs: Array, *,
                      teacher_temperature: float = 1.0, student_temperature: float = 1.0,
                      rest_bucket: bool = False) -> Array:
  """KL(teacher‖student) per position, [batch, length] (unmasked)."""
  dtype = jnp.promote_types(student_logits.dtype, jnp.float32)
  topk_ids = topk_ids.astype(jnp.int32)
  log_q = teacher_topk_log_probs(topk_logprobs.astype(dtype),
                                 temperature=teacher_temperature, rest_bucket=rest_bucket)
  log_s = student_topk_log_probs(student_logits.astype(dtype), topk_ids,
                                 present=topk_logprobs > ABSENT_LOGPROB,
                                 temperature=student_temperature, rest_bucket=rest_bucket)
  return jnp.sum(jnp.exp(log_q) * (log_q - log_s), axis=-1)


def topk_kl(student_logits: Array, topk_ids: Array, topk_logprobs: Array, mask: Array, *,
            teacher_temperature: float = 1.0, student_temperature: float = 1.0,
            rest_bucket: bool = False) -> Array:
  """Per-example Σ over masked tokens of KL(teacher top-k ‖ student).

  Args:
    student_logits: [batch, length, vocab].
    topk_ids: [batch, length, k] teacher token ids.
    topk_logprobs: [batch, length, k] teacher log-probs (any value on padding).
    mask: [batch, length] token weights (0 on padding).
  Returns:
    [batch] Σ_l mask · KL.
  """
  if topk_ids.shape != topk_logprobs.shape or topk_ids.shape[:-1] != student_logits.shape[:-1]:
    raise ValueError(f'topk_kl: topk_ids {topk_ids.shape} and topk_logprobs '
                     f'{topk_logprobs.shape} must be [batch, length, k] matching '
                     f'student_logits {student_logits.shape}')
  if mask.shape != student_logits.shape[:-1]:
    raise ValueError(f'topk_kl: mask {mask.shape} must be [batch, length] = '
                     f'{student_logits.shape[:-1]}')
  real = mask != 0
  # Padding positions may hold zeros/duplicates: make them harmless so neither
  # the value nor the gradient sees NaN (the masked-out result is then dropped).
  k = topk_ids.shape[-1]
  safe_ids = jnp.where(real[..., None], topk_ids, jnp.arange(k, dtype=topk_ids.dtype))
  safe_lp = jnp.where(real[..., None], topk_logprobs, jnp.log(0.5 / k))
  kl = topk_kl_per_token(student_logits, safe_ids, safe_lp,
                         teacher_temperature=teacher_temperature,
                         student_temperature=student_temperature, rest_bucket=rest_bucket)
  return jnp.sum(jnp.where(real, kl * mask, 0.0), axis=-1)


def _reduce(per_token: Array, weights: Array, loss_normalizing_factor: Any) -> Array:
  """Σ w·x / normaliser, with the same semantics as `weighted_cross_entropy`."""
  _no_per_task_tokens(loss_normalizing_factor)
  divisor, weights = normalizing_factor(weights, loss_normalizing_factor)
  total = jnp.sum(per_token * weights)
  return total if divisor is None else total / divisor


@dataclasses.dataclass(frozen=True)
class TopKDistillLoss:
  """FIRST objective: kl_weight · KL(teacher top-k ‖ student) + (1 − kl_weight) · CE.

  Needs batch features `decoder_topk_ids` / `decoder_topk_logprobs`
  [batch, length, k] (see `distill_sbs.data.topk`). Per-token KL and CE are
  weighted by `decoder_loss_weights` and normalised exactly like
  `CrossEntropyLoss` (`loss_normalizing_factor`). `scale_kl_by_t2` multiplies
  the KL by student_temperature² (Hinton et al.) so gradients keep their size.
  The z-loss is always added (it regularises the student's logits).
  `cross_entropy_without_topk=True` scores batches that carry no top-k (e.g.
  validation on a plain label task) with the plain CE term instead of failing.
  """
  kl_weight: float = 1.0
  teacher_temperature: float = 1.0
  student_temperature: float = 1.0
  rest_bucket: bool = False
  scale_kl_by_t2: bool = False
  label_smoothing: float = 0.0
  z_loss: float = 1e-4
  loss_normalizing_factor: Any = NUM_REAL_TARGET_TOKENS
  cross_entropy_without_topk: bool = False

  def __post_init__(self):
    if not 0.0 <= self.kl_weight <= 1.0:
      raise ValueError(f'TopKDistillLoss.kl_weight={self.kl_weight} must be in [0, 1]')
    for name in ('teacher_temperature', 'student_temperature'):
      if not float(getattr(self, name)) > 0:
        raise ValueError(f'TopKDistillLoss.{name}={getattr(self, name)} must be > 0')

  def __call__(self, logits: Array, batch: Batch) -> tuple[Array, dict[str, Array]]:
    if self.cross_entropy_without_topk and 'decoder_topk_ids' not in batch:
      loss, zl, wsum = weighted_cross_entropy(
          logits, batch['decoder_target_tokens'], batch.get('decoder_loss_weights'),
          label_smoothing=self.label_smoothing, z_loss=self.z_loss,
          loss_normalizing_factor=self.loss_normalizing_factor)
      return loss, {'loss': loss, 'cross_entropy': loss - zl, 'z_loss': zl, 'weight_sum': wsum}
    for f in ('decoder_topk_ids', 'decoder_topk_logprobs'):
      if f not in batch:
        raise KeyError(f'TopKDistillLoss needs the batch feature {f!r}; use the FIRST '
                       'feature converter (distill_sbs.data.topk.TopKFeatureConverter)')
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights')
    if weights is None:
      weights = (targets > 0).astype(jnp.float32)
    ids, lps = batch['decoder_topk_ids'], batch['decoder_topk_logprobs']
    # A token whose every stored entry is absent (a teacher distribution that
    # could not be carried onto this token, `data.cross_tokenizer`) has loss
    # weight 0: no KL, no CE, not counted by the normaliser.
    carried = jnp.any(lps > ABSENT_LOGPROB, axis=-1)                  # [b, l]
    scored = weights != 0  # not token > 0: id 0 is a real token in HF vocabularies
    weights = weights.astype(jnp.float32) * carried
    real = weights != 0
    k = ids.shape[-1]
    ids = jnp.where(real[..., None], ids, jnp.arange(k, dtype=ids.dtype))
    lps = jnp.where(real[..., None], lps, jnp.log(0.5 / k))
    kl_tok = topk_kl_per_token(logits, ids, lps,
                               teacher_temperature=self.teacher_temperature,
                               student_temperature=self.student_temperature,
                               rest_bucket=self.rest_bucket)  # [b, l]
    kl_tok = jnp.where(real, kl_tok, 0.0)
    if self.scale_kl_by_t2:
      kl_tok = kl_tok * self.student_temperature ** 2
    ce_tok, zl_tok = token_cross_entropy(logits, targets, z_loss=self.z_loss,
                                         label_smoothing=self.label_smoothing)
    norm = self.loss_normalizing_factor
    kl = _reduce(kl_tok, weights, norm)
    ce = _reduce(ce_tok - zl_tok, weights, norm)
    zl = _reduce(zl_tok, weights, norm)
    loss = self.kl_weight * kl + (1.0 - self.kl_weight) * ce + zl
    teacher_top1 = jnp.take_along_axis(
        batch['decoder_topk_ids'], jnp.argmax(batch['decoder_topk_logprobs'], axis=-1)[..., None],
        axis=-1)[..., 0]  # [b, l]
    top1 = jnp.argmax(logits, axis=-1) == teacher_top1
    n_real = jnp.maximum(jnp.sum(real), 1)
    agree = jnp.sum(jnp.where(real, top1, False)) / n_real
    return loss, {'loss': loss, 'kl': kl, 'cross_entropy': ce, 'z_loss': zl,
                  'weight_sum': jnp.sum(weights), 'topk_top1_agreement': agree,
                  'uncarried_tokens': jnp.sum(scored & ~carried).astype(jnp.float32)}
