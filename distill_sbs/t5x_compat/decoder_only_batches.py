"""The T5X-free half of the T5X decoder-only wrapper (`t5x_compat.decoder_only`).

Batches are those of `distill_sbs.data.decoder_only_converters` (rows
`inputs ++ targets`, not shifted; `decoder_loss_weights` on the targets;
`decoder_segment_ids` always present): no token id marks padding, so the loss
mask and T5X's metric segment ids come from the weights and segment ids.
Decoding is the project's KV-cache decoding (`models.generate` on the prompt
part of each row, `training.decoder_only_model.prompt_from_batch`), since
T5X's decoder-only decoding prefills through network arguments (`prefill`,
`prefill_lengths`) and a shifted layout the project's network does not use.

This module imports no T5X (the package does): tests load it by path.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from distill_sbs import models
from distill_sbs.training import decoder_only_model

Array = jnp.ndarray
Batch = Mapping[str, Array]


def loss_mask(batch: Batch) -> Array:
  """[batch, length] bool: the loss-weighted (target) positions."""
  if 'decoder_loss_weights' not in batch:
    raise KeyError('the T5X decoder-only wrapper needs decoder_loss_weights (no token id '
                   'marks padding); use a converter of distill_sbs.data.decoder_only_converters '
                   '(t5x_compat.DecoderOnly*FeatureConverter)')
  return jnp.asarray(batch['decoder_loss_weights']) > 0


def metric_segment_ids(batch: Batch) -> dict[str, Array]:
  """T5X `_compute_metrics` segment ids: {'decoder': decoder_segment_ids}
  (else the loss mask, for batches without segment ids)."""
  seg = batch.get('decoder_segment_ids')
  return {'decoder': loss_mask(batch).astype(jnp.int32) if seg is None else seg}


def task_token_means(token_losses: Array, batch: Batch) -> dict[str, tuple[Array, Array]]:
  """(sum, count) of the per-token losses [batch, length] of the label and
  rationale target tokens (`decoder_task_ids` 0 / 1); {} without task ids."""
  task_ids = batch.get('decoder_task_ids')
  if task_ids is None:
    return {}
  real = loss_mask(batch)
  out = {}
  for t, name in enumerate(('label_loss', 'rationale_loss')):
    in_t = real & (task_ids == t)
    out[name] = (jnp.sum(jnp.where(in_t, token_losses, 0.0)), jnp.sum(in_t))
  return out


def predict(config: models.DecoderOnlyConfig, params: Any, batch: Batch, *,
            method: str = 'greedy', max_decode_length: Optional[int] = None,
            rng: Optional[jax.Array] = None, num_decodes: int = 1,
            return_all_decodes: bool = False, options: Optional[Mapping[str, Any]] = None
            ) -> tuple[Array, dict[str, Array]]:
  """T5X's `predict_batch_with_aux` contract: the continuations [batch, length]
  of each row's prompt part (T5X returns them with the prefix removed) and
  {'scores': [batch]}; `return_all_decodes` (beam: the beams; else one) gives
  [batch, num_decodes, length] / [batch, num_decodes] in increasing score order
  (the best last), as T5X's. Tokens after EOS are 0, as T5X's."""
  prompts, lengths = decoder_only_model.prompt_from_batch(batch)
  length = int(max_decode_length or prompts.shape[1])
  opts = dict(options or {})
  if method == 'sample' and rng is not None:
    opts.setdefault('rng', rng)
  if method == 'beam':
    opts.setdefault('num_beams', max(int(num_decodes), 1))
    tokens, scores = models.generate(config, params, prompts, max_decode_length=length,
                                     prompt_lengths=lengths, method='beam',
                                     return_all_beams=True, **opts)  # [b, beams, L]
  else:
    tokens, scores = models.generate(config, params, prompts, max_decode_length=length,
                                     prompt_lengths=lengths, method=method, **opts)
    tokens, scores = tokens[:, None], scores[:, None]  # [b, 1, L]
  eos = jnp.asarray(config.eos_ids, jnp.int32)
  ended = jnp.cumsum(jnp.isin(tokens, eos), axis=-1) - jnp.isin(tokens, eos)  # after EOS
  tokens = jnp.where(ended > 0, 0, tokens)
  if return_all_decodes:
    return tokens[:, ::-1], {'scores': scores[:, ::-1]}
  return tokens[:, 0], {'scores': scores[:, 0]}
