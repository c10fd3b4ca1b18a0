"""FIRST on carried top-k: the top-k KL plus a ULD term on positions that do not
align one to one across tokenizers (`data/cross_tokenizer.py`, mismatch='uld').

Such a position's row holds the sorted top-k log-probs of the teacher token at
the student token's first byte, with every id 0 (pad: never a carried id). The
Universal Logit Distillation loss (Boizard et al., 2024) compares sorted
probability vectors, which needs no shared vocabulary:
  ULD = Σ_i |q_(i) − p_(i)|,  i = 1..k,
q_(i) the teacher's i-th largest probability (temperature T, rest bucket as in
`losses.teacher_topk_log_probs`), p_(i) the student's i-th largest
(`jax.lax.top_k` of softmax(z / S)). On those rows the top-k KL sees an all
absent row (KL 0); elsewhere the loss is `TopKDistillLoss` unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from distill_sbs.distill import losses

Array = jnp.ndarray


def uld_rows(topk_ids: Array, topk_logprobs: Array) -> Array:
  """bool [..., L]: ULD rows (ids all 0, some log-prob present)."""
  return (jnp.all(topk_ids == 0, -1)
          & jnp.any(topk_logprobs > losses.ABSENT_LOGPROB, -1))


def uld_per_token(student_logits: Array, sorted_logprobs: Array, *,
                  teacher_temperature: float = 1.0, student_temperature: float = 1.0
                  ) -> Array:
  """Σ_i |q_(i) − p_(i)| per position [..., L] (sorted teacher vs student top-k)."""
  k = sorted_logprobs.shape[-1]
  q = jnp.exp(losses.teacher_topk_log_probs(sorted_logprobs, temperature=teacher_temperature,
                                            rest_bucket=True)[..., :k])  # [..., k]
  q = -jnp.sort(-q, axis=-1)
  p = jax.nn.softmax(student_logits.astype(jnp.float32) / student_temperature, axis=-1)
  p_top = jax.lax.top_k(p, k)[0]  # [..., k] descending
  return jnp.sum(jnp.abs(q - p_top), axis=-1)


@dataclasses.dataclass(frozen=True)
class CrossTokenizerTopKLoss:
  """`base` (a `losses.TopKDistillLoss`) + uld_weight · ULD on the ULD rows.

  The ULD term is Σ over ULD rows of w · ULD divided by Σ w over all real
  target tokens (the base loss's NUM_REAL_TARGET_TOKENS normaliser). Records
  written with mismatch='zero' hold no ULD row: the loss is then `base`'s.
  """
  base: Any = None
  uld_weight: float = 1.0

  def __call__(self, logits: Array, batch) -> tuple[Array, dict[str, Array]]:
    base = self.base or losses.TopKDistillLoss(rest_bucket=True)
    if 'decoder_topk_ids' not in batch:
      return base(logits, batch)
    ids, lps = batch['decoder_topk_ids'], batch['decoder_topk_logprobs']
    weights = batch.get('decoder_loss_weights')
    if weights is None:
      weights = (batch['decoder_target_tokens'] > 0).astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    rows = uld_rows(ids, lps) & (weights != 0)  # [b, l]
    kl_lps = jnp.where(rows[..., None], -1e4, lps)  # all absent: top-k KL 0
    loss, metrics = base(logits, {**batch, 'decoder_topk_logprobs': kl_lps})
    safe = jnp.where(rows[..., None], lps, 0.0)
    per = uld_per_token(logits, safe, teacher_temperature=base.teacher_temperature,
                        student_temperature=base.student_temperature)
    uld = jnp.sum(jnp.where(rows, per * weights, 0.0)) / jnp.maximum(jnp.sum(weights), 1e-9)
    loss = loss + self.uld_weight * uld
    return loss, {**metrics, 'loss': loss, 'uld': uld,
                  'uld_tokens': jnp.sum(rows).astype(jnp.float32)}

