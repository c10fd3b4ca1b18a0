"""KV-cache decoding for `DecoderOnlyConfig` models: greedy, sampling, beam search;
teacher-forced `score` / `topk_scores`.

Prompts are left-aligned [batch, prompt_len] with `prompt_lengths` [batch]
(tokens past a row's length are ignored). The cache holds prompt_len +
max_decode_length positions; one prefill call writes the prompts, then each
step feeds one token per row at cache index length + step, so rows of
different lengths decode together (a row's stale prefill entries past its
length are overwritten before its mask reaches them). Reached through
`distill_sbs.models.generate`, which dispatches on the config type.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from distill_sbs.models import decoding
from distill_sbs.models.decoder_only import DecoderOnlyTransformer
from distill_sbs.models.decoder_only_config import DecoderOnlyConfig

Array = jnp.ndarray


def _apply(model, params, cache, tokens, positions, causal_attention=None):
  logits, new_vars = model.apply({'params': params, 'cache': cache}, tokens,
                                 enable_dropout=False, decode=True,
                                 decoder_positions=positions,
                                 decoder_causal_attention=causal_attention, mutable=['cache'])
  return logits, new_vars['cache']


def init_cache(config: DecoderOnlyConfig, params, batch: int, length: int):
  """A zeroed cache of `length` positions (shapes from `jax.eval_shape`)."""
  model = DecoderOnlyTransformer(config)
  tokens = jnp.zeros((batch, length), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  shapes = jax.eval_shape(lambda p: model.apply(
      {'params': p}, tokens, enable_dropout=False, decode=True,
      decoder_positions=positions, mutable=['cache'])[1]['cache'], params)
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=('config', 'max_decode_length', 'sample',
                                             'topk', 'topp', 'record_topk', 'prefix_lm'))
def _decode(params, prompts, lengths, rng, temperature, *, config, max_decode_length,
            sample, topk, topp, record_topk=0, prefix_lm=False):
  model = DecoderOnlyTransformer(config)
  batch, prompt_len = prompts.shape
  cache = init_cache(config, params, batch, prompt_len + max_decode_length)
  positions = jnp.broadcast_to(jnp.arange(prompt_len), prompts.shape)
  logits, cache = _apply(model, params, cache, prompts, positions,  # [b, P, vocab]
                         _prefix(positions, lengths) if prefix_lm else None)
  last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
  eos = jnp.asarray(config.eos_ids, jnp.int32)
  k = max(record_topk, 1)

  def cond(state):
    i, _, done = state[0], state[1], state[2]
    return (i < max_decode_length) & ~jnp.all(done)

  def body(state):
    i, tokens, done, logp, cache, rng, logits, (top_ids, top_lps) = state
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))  # [b, vocab]
    if record_topk:  # the model's own next-token top-k at generated position i
      values, ids = jax.lax.top_k(log_probs, k)  # [b, k]
      top_ids = top_ids.at[:, i].set(jnp.where(done[:, None], 0, ids.astype(jnp.int32)))
      top_lps = top_lps.at[:, i].set(jnp.where(done[:, None], 0.0, values))
    nxt, rng = decoding.next_token(log_probs, rng, temperature, sample, topk, topp)
    step_logp = jnp.take_along_axis(log_probs, nxt[:, None], axis=-1)[:, 0]
    logp = logp + jnp.where(done, 0.0, step_logp)
    nxt = jnp.where(done, config.pad_id, nxt)
    tokens = tokens.at[:, i].set(nxt)
    done = done | jnp.isin(nxt, eos)
    logits, cache = _apply(model, params, cache, nxt[:, None], (lengths + i)[:, None])
    return i + 1, tokens, done, logp, cache, rng, logits[:, 0], (top_ids, top_lps)

  topk_state = (jnp.zeros((batch, max_decode_length, k), jnp.int32),  # [b, T, k]
                jnp.zeros((batch, max_decode_length, k), jnp.float32))
  state = (jnp.array(0, jnp.int32),
           jnp.full((batch, max_decode_length), config.pad_id, jnp.int32),
           jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32), cache, rng, last,
           topk_state)
  _, tokens, _, logp, _, _, _, topk_out = jax.lax.while_loop(cond, body, state)
  return tokens, logp, topk_out


def _prefix(positions, lengths):
  """Prefix-LM prefill: 1 on each row's prompt (`decoder_causal_attention`)."""
  return (positions < lengths[:, None]).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('config', 'max_decode_length', 'beams',
                                             'prefix_lm'))
def _beam_search(params, prompts, lengths, alpha, *, config, max_decode_length, beams,
                 prefix_lm=False):
  """T5X-style beam search (`decoding._beam_search`) over a prefilled cache."""
  from distill_sbs.models.decoding import NEG_INF, _gather_beams, brevity_penalty  # pylint: disable=g-import-not-at-top
  model = DecoderOnlyTransformer(config)
  batch, prompt_len = prompts.shape
  k, length = beams, max_decode_length
  cache = init_cache(config, params, batch, prompt_len + length)
  positions = jnp.broadcast_to(jnp.arange(prompt_len), prompts.shape)
  logits, cache = _apply(model, params, cache, prompts, positions,  # [b, P, vocab]
                         _prefix(positions, lengths) if prefix_lm else None)
  last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
  # Every beam of a row shares its prompt: [b, ...] -> [b*k, ...].
  cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, k, axis=0), cache)
  last = jnp.repeat(last, k, axis=0)
  lengths_k = jnp.repeat(lengths, k, axis=0)
  eos = jnp.asarray(config.eos_ids, jnp.int32)

  def cond(state):
    i, alive_logp, fin_scores, fin_flags = state[0], state[2], state[5], state[6]
    best_alive = alive_logp[:, 0] / brevity_penalty(alpha, jnp.array(length))
    worst_fin = jnp.min(jnp.where(fin_flags, fin_scores, NEG_INF), axis=1)
    done = jnp.all(fin_flags, axis=1) & (worst_fin >= best_alive)
    return (i < length) & ~jnp.all(done)

  def body(state):
    i, alive_seq, alive_logp, fin_seq, fin_logp, fin_scores, fin_flags, cache, logits = state
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))  # [b*k, vocab]
    beams, origin = decoding.beam_update(
        i, (alive_seq, alive_logp, fin_seq, fin_logp, fin_scores, fin_flags), log_probs,
        lambda t: jnp.isin(t, eos), alpha, k)
    cache = _gather_beams(cache, origin, batch, flat=True)
    fed = beams[0][:, :, i].reshape(-1, 1)  # [b*k, 1]: the new alive beams' tokens
    logits, cache = _apply(model, params, cache, fed, (lengths_k + i)[:, None])
    return (i + 1, *beams, cache, logits[:, 0])

  init_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  pad_seq = jnp.full((batch, k, length), config.pad_id, jnp.int32)
  state = (jnp.array(0, jnp.int32), pad_seq, init_logp, pad_seq,
           jnp.full((batch, k), NEG_INF), jnp.full((batch, k), NEG_INF),
           jnp.zeros((batch, k), bool), cache, last)
  _, alive_seq, alive_logp, fin_seq, fin_logp, fin_scores, fin_flags, _, _ = (
      jax.lax.while_loop(cond, body, state))
  return decoding.best_beams(alive_seq, alive_logp, fin_seq, fin_logp, fin_scores,
                             fin_flags, k)


def generate(config: DecoderOnlyConfig, params: Any, prompt_tokens: Array, *,
             max_decode_length: int, prompt_lengths: Optional[Array] = None,
             method: str = 'greedy', temperature: float = 1.0, topk: int = 0,
             topp: float = 0.0, rng: Optional[Array] = None, seed: int = 0,
             num_beams: Optional[int] = None, alpha: Optional[float] = None,
             return_all_beams: bool = False, return_topk: int = 0,
             prefix_lm: bool = False) -> tuple[Array, ...]:
  """Continues left-aligned prompts [batch, len] (`prompt_lengths` [batch],
  default the full length) by `max_decode_length` tokens.

  Returns tokens [batch, max_decode_length] int32 (`config.pad_id` after the
  first EOS of `config.eos_ids`) and their summed log-probs [batch] (model's
  own, temperature 1, up to and including EOS). method='beam' (`num_beams`,
  default 4; `alpha`, default 0.6, T5X's brevity penalty) returns the best
  beam, or all [batch, beams, ...] best first with `return_all_beams`.
  `return_topk` (greedy / sample): also the model's top-k next-token ids
  [batch, max_decode_length, k] int32 and log-probs (untempered log-softmax,
  best first; 0 after the row ended) at each generated position, collected
  while decoding: what `topk_scores` gives teacher-forced on the same tokens.
  `prefix_lm`: the prompt attends bidirectionally within itself (a model
  trained with `decoder_causal_attention`, e.g. UL2R prefix-LM rows).
  """
  from distill_sbs.models.decoding import _unwrap  # pylint: disable=g-import-not-at-top
  prompts = jnp.asarray(prompt_tokens, jnp.int32)
  if prompts.ndim != 2:
    raise ValueError(f'prompt_tokens must be [batch, length], got {prompts.shape}')
  if max_decode_length < 1:
    raise ValueError(f'max_decode_length must be >= 1, got {max_decode_length}')
  if prompt_lengths is None:
    prompt_lengths = jnp.full((prompts.shape[0],), prompts.shape[1], jnp.int32)
  lengths = jnp.asarray(prompt_lengths, jnp.int32)
  if lengths.shape != (prompts.shape[0],):
    raise ValueError(f'prompt_lengths must be [batch], got {lengths.shape}')
  if method == 'beam':
    if return_topk:
      raise ValueError("return_topk needs method 'greedy' or 'sample'")
    seqs, logp = _beam_search(_unwrap(params), prompts, lengths,
                              jnp.float32(0.6 if alpha is None else alpha), config=config,
                              max_decode_length=int(max_decode_length),
                              beams=int(num_beams or 4), prefix_lm=bool(prefix_lm))
    return (seqs, logp) if return_all_beams else (seqs[:, 0], logp[:, 0])
  if method not in ('greedy', 'sample'):
    raise ValueError(f"decoder-only decoding method {method!r}: expected 'greedy', "
                     "'sample' or 'beam'")
  if rng is None:
    rng = jax.random.PRNGKey(seed)
  tokens, logp, (top_ids, top_lps) = _decode(
      _unwrap(params), prompts, lengths, rng, jnp.float32(temperature), config=config,
      max_decode_length=int(max_decode_length), sample=method == 'sample', topk=int(topk),
      topp=float(topp), record_topk=int(return_topk), prefix_lm=bool(prefix_lm))
  if return_topk:
    return tokens, logp, top_ids, top_lps
  return tokens, logp


@functools.partial(jax.jit, static_argnames=('config',))
def _target_log_probs(params, prompts, lengths, targets, *, config):
  """Log-softmax [b, target_len, vocab] of each target given its row's prompt."""
  batch, prompt_len = prompts.shape
  total = prompt_len + targets.shape[1]
  j = jnp.arange(total)[None]  # [1, total]: prompt[:length] then the targets
  from_prompt = jnp.take_along_axis(prompts, jnp.minimum(j, prompt_len - 1).repeat(
      batch, 0), axis=1)
  t_idx = jnp.clip(j - lengths[:, None], 0, targets.shape[1] - 1)
  seq = jnp.where(j < lengths[:, None], from_prompt,
                  jnp.take_along_axis(targets, t_idx, axis=1))  # [b, total]
  logits = DecoderOnlyTransformer(config).apply({'params': params}, seq, None,
                                                enable_dropout=False)
  at = lengths[:, None] - 1 + jnp.arange(targets.shape[1])[None]  # predicting targets
  logits = jnp.take_along_axis(logits, at[..., None], axis=1)
  return jax.nn.log_softmax(logits.astype(jnp.float32))


def _score_inputs(prompt_tokens, target_tokens, prompt_lengths, target_lengths):
  prompts = jnp.asarray(prompt_tokens, jnp.int32)
  targets = jnp.asarray(target_tokens, jnp.int32)
  b = prompts.shape[0]
  lengths = (jnp.full((b,), prompts.shape[1], jnp.int32) if prompt_lengths is None
             else jnp.asarray(prompt_lengths, jnp.int32))
  real = jnp.ones(targets.shape, bool) if target_lengths is None else (
      jnp.arange(targets.shape[1])[None] < jnp.asarray(target_lengths)[:, None])
  return prompts, targets, lengths, real


def score(config: DecoderOnlyConfig, params: Any, prompt_tokens: Array,
          target_tokens: Array, *, prompt_lengths: Optional[Array] = None,
          target_lengths: Optional[Array] = None) -> Array:
  """Per-token log-probs [batch, target_len] of `target_tokens` continuing the
  left-aligned prompts (0 at or past `target_lengths`; no id is padding)."""
  from distill_sbs.models.decoding import _unwrap  # pylint: disable=g-import-not-at-top
  prompts, targets, lengths, real = _score_inputs(prompt_tokens, target_tokens,
                                                  prompt_lengths, target_lengths)
  lp = _target_log_probs(_unwrap(params), prompts, lengths, targets, config=config)
  token_lp = jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]
  return jnp.where(real, token_lp, 0.0)


def topk_scores(config: DecoderOnlyConfig, params: Any, prompt_tokens: Array,
                target_tokens: Array, k: int, *, prompt_lengths: Optional[Array] = None,
                target_lengths: Optional[Array] = None) -> tuple[Array, Array]:
  """Top-k next-token ids [b, l, k] int32 and log-probs [b, l, k] at each target
  position (teacher-forced, best first; 0 at or past `target_lengths`)."""
  from distill_sbs.models.decoding import _unwrap  # pylint: disable=g-import-not-at-top
  prompts, targets, lengths, real = _score_inputs(prompt_tokens, target_tokens,
                                                  prompt_lengths, target_lengths)
  lp = _target_log_probs(_unwrap(params), prompts, lengths, targets, config=config)
  values, ids = jax.lax.top_k(lp, int(k))
  real = real[..., None]
  return jnp.where(real, ids, 0).astype(jnp.int32), jnp.where(real, values, 0.0)
