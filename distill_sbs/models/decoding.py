"""Fast decoding with a key/value cache: greedy, sampling, beam search; scoring.

The encoder runs once; every step feeds one new token through
`Transformer.decode(..., decode=True)` with the mutable `cache` collection
(T5X semantics), inside a `jax.lax.while_loop` that stops early once every row
has produced EOS. Compiled functions are cached by jit on (config, shapes,
static options). `params` may be the `'params'` collection content, a
`{'params': ...}` dict, boxed (`nn.LogicallyPartitioned`) or sharded arrays.

Returned log-probs are the model's own (temperature 1) log-probabilities of the
produced tokens, summed up to and including EOS, so they equal `score(...)`
summed over the same tokens.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax.core import meta

from distill_sbs.models.config import T5Config
from distill_sbs.models.decoder_only_config import DecoderOnlyConfig
from distill_sbs.models.network import Transformer

Array = jnp.ndarray
EOS_ID = 1
NEG_INF = -1.0e7


def _unwrap(params: Any) -> Any:
  params = meta.unbox(params)
  if isinstance(params, dict) and set(params) == {'params'}:
    params = params['params']
  return params


def brevity_penalty(alpha: float, length: Array) -> Array:
  """T5X / GNMT length penalty ((5 + length) / 6) ** alpha."""
  return jnp.power((5.0 + length.astype(jnp.float32)) / 6.0, alpha)


def unpack_encoded(encoded: Array, encoder_input_tokens: Array,
                   encoder_segment_ids: Array, num_segments: int
                   ) -> tuple[Array, Array, Array]:
  """One decoder row per (packed row, segment), row-major.

  encoded [R, L, emb] of packed rows, tokens / segment ids [R, L] →
  encoded [R·S, L, emb] (row r repeated S times), tokens [R·S, L] zeroed outside
  segment s + 1 (so the cross-attention mask, built from tokens > 0, sees only
  that example), and which of the R·S rows hold a segment [R·S] bool.
  """
  s = int(num_segments)
  segment = jnp.tile(jnp.arange(1, s + 1, dtype=jnp.int32), encoded.shape[0])  # [R·S]
  seg = jnp.repeat(encoder_segment_ids, s, axis=0)  # [R·S, L]
  mine = seg == segment[:, None]
  tokens = jnp.where(mine, jnp.repeat(encoder_input_tokens, s, axis=0), 0)
  return jnp.repeat(encoded, s, axis=0), tokens, jnp.any(mine & (tokens > 0), axis=1)


def _encode_and_init_cache(model: Transformer, params, encoder_input_tokens: Array,
                           max_decode_length: int, encoder_segment_ids=None,
                           num_segments: int = 0):
  """Encoded inputs and a zeroed cache for `max_decode_length` steps; with
  `encoder_segment_ids` (packed rows) one decoder row per segment
  (`unpack_encoded`). Returns (encoded, the tokens the decoder masks with,
  rows that hold an example [batch] bool, cache)."""
  variables = {'params': params}
  encoded = model.apply(variables, encoder_input_tokens,
                        encoder_segment_ids=encoder_segment_ids, enable_dropout=False,
                        method=Transformer.encode)
  present = jnp.ones((encoder_input_tokens.shape[0],), bool)
  if encoder_segment_ids is not None:
    encoded, encoder_input_tokens, present = unpack_encoded(
        encoded, encoder_input_tokens, encoder_segment_ids, num_segments)
  dummy = jnp.ones((encoder_input_tokens.shape[0], max_decode_length), jnp.int32)
  _, new_vars = model.apply(variables, encoded, encoder_input_tokens, dummy, dummy,
                            enable_dropout=False, decode=True,
                            max_decode_length=max_decode_length, mutable=['cache'],
                            method=Transformer.decode)
  return encoded, encoder_input_tokens, present, new_vars['cache']


def _step(model: Transformer, params, cache, encoded: Array,
          encoder_input_tokens: Array, token: Array, max_decode_length: int):
  """One decoding step: token [batch] -> (log-probs [batch, vocab], cache)."""
  token = token[:, None]  # [batch, 1]
  logits, new_vars = model.apply(
      {'params': params, 'cache': cache}, encoded, encoder_input_tokens, token, token,
      enable_dropout=False, decode=True, max_decode_length=max_decode_length,
      mutable=['cache'], method=Transformer.decode)
  return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32)), new_vars['cache']


def _filter_logits(logits: Array, topk: int, topp: float) -> Array:
  """Top-k then nucleus (top-p) filtering of [batch, vocab] logits."""
  if topk and topk > 0:
    kth = jax.lax.top_k(logits, topk)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if topp and 0.0 < topp < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    cum_before = jnp.cumsum(probs, axis=-1) - probs
    # The smallest logit still inside the nucleus (the top token always is).
    keep = cum_before < topp
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, NEG_INF, logits)
  return logits


def next_token(log_probs: Array, rng: Array, temperature, sample: bool, topk: int,
               topp: float) -> tuple[Array, Array]:
  """[batch, vocab] log-probs -> the next tokens [batch] (argmax, or a sample at
  `temperature` after top-k / top-p filtering) and the advanced rng."""
  if not sample:
    return jnp.argmax(log_probs, axis=-1).astype(jnp.int32), rng
  rng, sub = jax.random.split(rng)
  scaled = _filter_logits(log_probs / jnp.maximum(temperature, 1e-9), topk, topp)
  return jax.random.categorical(sub, scaled, axis=-1).astype(jnp.int32), rng


@functools.partial(jax.jit, static_argnames=('config', 'max_decode_length', 'sample',
                                             'topk', 'topp', 'record_topk',
                                             'num_segments'))
def _greedy_or_sample(params, encoder_input_tokens, rng, temperature, *, config,
                      max_decode_length, sample, topk, topp, record_topk=0,
                      encoder_segment_ids=None, num_segments=0):
  model = Transformer(config)
  encoded, encoder_input_tokens, present, cache = _encode_and_init_cache(
      model, params, encoder_input_tokens, max_decode_length, encoder_segment_ids,
      num_segments)
  batch = encoder_input_tokens.shape[0]
  k = max(record_topk, 1)

  def cond(state):
    i, _, _, done, _, _, _, _ = state
    return (i < max_decode_length) & ~jnp.all(done)

  def body(state):
    i, tokens, token, done, logp, cache, rng, (top_ids, top_lps) = state
    log_probs, cache = _step(model, params, cache, encoded, encoder_input_tokens, token,
                             max_decode_length)
    if record_topk:  # the model's own next-token top-k at this position
      values, ids = jax.lax.top_k(log_probs.astype(jnp.float32), k)   # [batch, k]
      top_ids = top_ids.at[:, i].set(jnp.where(done[:, None], 0, ids.astype(jnp.int32)))
      top_lps = top_lps.at[:, i].set(jnp.where(done[:, None], 0.0, values))
    nxt, rng = next_token(log_probs, rng, temperature, sample, topk, topp)
    nxt = jnp.where(done, 0, nxt)
    step_logp = jnp.take_along_axis(log_probs, nxt[:, None], axis=-1)[:, 0]
    logp = logp + jnp.where(done, 0.0, step_logp)
    tokens = tokens.at[:, i].set(nxt)
    done = done | (nxt == EOS_ID)
    return i + 1, tokens, nxt, done, logp, cache, rng, (top_ids, top_lps)

  topk_state = (jnp.zeros((batch, max_decode_length, k), jnp.int32),   # [b, T, k]
                jnp.zeros((batch, max_decode_length, k), jnp.float32))
  state = (jnp.array(0, jnp.int32), jnp.zeros((batch, max_decode_length), jnp.int32),
           jnp.zeros((batch,), jnp.int32), ~present,  # rows without an example: done
           jnp.zeros((batch,), jnp.float32), cache, rng, topk_state)
  _, tokens, _, _, logp, _, _, topk_out = jax.lax.while_loop(cond, body, state)
  return tokens, logp, topk_out


def _gather_beams(tree, origin: Array, batch: int, flat: bool, skip_cross: bool = False):
  """Reorders beams by origin [b, k']: leaves [b, k, ...], or [b*k, ...] if flat.

  Scalars (`cache_index`) are left alone; with `skip_cross` so are the cross
  attention caches, which are identical across the beams of a row.
  """

  def gather_leaf(x):
    y = x.reshape((batch, -1) + x.shape[1:]) if flat else x
    idx = origin.reshape(origin.shape + (1,) * (y.ndim - 2))
    y = jnp.take_along_axis(y, idx, axis=1)
    return y.reshape((-1,) + y.shape[2:]) if flat else y

  def gather(path, x):
    keys = [getattr(p, 'key', None) for p in path]
    # Under `scan_layers` the cache leaves carry a leading layer axis.
    stacked = 'layers' in keys
    if x.ndim == int(stacked) or (skip_cross and 'encoder_decoder_attention' in keys):
      return x
    return jax.vmap(gather_leaf)(x) if stacked else gather_leaf(x)

  return jax.tree_util.tree_map_with_path(gather, tree)


@functools.partial(jax.jit, static_argnames=('config', 'max_decode_length', 'beams'))
def _beam_search(params, encoder_input_tokens, alpha, *, config, max_decode_length,
                 beams):
  model = Transformer(config)
  batch, k, length = encoder_input_tokens.shape[0], beams, max_decode_length
  enc = jnp.repeat(encoder_input_tokens, k, axis=0)  # [b*k, enc_len]
  encoded, _, _, cache = _encode_and_init_cache(model, params, enc, length)

  def cond(state):
    i, alive_logp, _, fin_scores, fin_flags = state[0], state[2], state[3], state[5], state[6]
    best_alive = alive_logp[:, 0] / brevity_penalty(alpha, jnp.array(length))
    worst_fin = jnp.min(jnp.where(fin_flags, fin_scores, NEG_INF), axis=1)
    done = jnp.all(fin_flags, axis=1) & (worst_fin >= best_alive)
    return (i < length) & ~jnp.all(done)

  def body(state):
    i, alive_seq, alive_logp, fin_seq, fin_logp, fin_scores, fin_flags, cache = state
    prev = jnp.take(alive_seq, jnp.maximum(i - 1, 0), axis=2)  # [b, k]
    token = jnp.where(i == 0, 0, prev).reshape(-1)
    log_probs, cache = _step(model, params, cache, encoded, enc, token, length)
    beams, origin = beam_update(i, (alive_seq, alive_logp, fin_seq, fin_logp, fin_scores,
                                    fin_flags), log_probs, lambda t: t == EOS_ID, alpha, k)
    cache = _gather_beams(cache, origin, batch, flat=True, skip_cross=True)
    return (i + 1, *beams, cache)

  init_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  zeros_seq = jnp.zeros((batch, k, length), jnp.int32)
  state = (jnp.array(0, jnp.int32), zeros_seq, init_logp, zeros_seq,
           jnp.full((batch, k), NEG_INF), jnp.full((batch, k), NEG_INF),
           jnp.zeros((batch, k), bool), cache)
  _, alive_seq, alive_logp, fin_seq, fin_logp, fin_scores, fin_flags, _ = (
      jax.lax.while_loop(cond, body, state))
  return best_beams(alive_seq, alive_logp, fin_seq, fin_logp, fin_scores, fin_flags, k)


def beam_update(i, beams, log_probs: Array, ended, alpha, k: int):
  """One beam-search step on `beams` = (alive_seq [b, k, L], alive_logp [b, k],
  fin_seq [b, k, L], fin_logp, fin_scores, fin_flags [b, k]) with the next-token
  `log_probs` [b·k, vocab]; `ended(tokens)` says which tokens end a hypothesis.
  Returns the new beams and, per new alive beam, the old beam it extends
  [b, k] (to reorder the cache)."""
  alive_seq, alive_logp, fin_seq, fin_logp, fin_scores, fin_flags = beams
  batch, vocab = alive_seq.shape[0], log_probs.shape[-1]
  cand = (alive_logp[:, :, None] + log_probs.reshape(batch, k, vocab)).reshape(batch, -1)
  top_logp, top_idx = jax.lax.top_k(cand, 2 * k)  # [b, 2k]
  origin, tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
  seqs = _gather_beams(alive_seq, origin, batch, flat=False).at[:, :, i].set(tok)  # [b, 2k, L]
  # New alive beams: the best k candidates that did not end.
  is_end = ended(tok)
  alive_cand = jnp.where(is_end, NEG_INF, top_logp)
  # As in transformers, an ending candidate finishes a hypothesis only when it
  # ranks among the top k (so one beam is exactly greedy decoding).
  is_eos = is_end & (jnp.arange(2 * k) < k)[None]
  new_alive_logp, pick = jax.lax.top_k(alive_cand, k)
  new_alive_seq = jnp.take_along_axis(seqs, pick[:, :, None], axis=1)
  # Finished pool: merge the old one with the candidates that ended.
  scores = jnp.where(is_eos, top_logp / brevity_penalty(alpha, i + 1), NEG_INF)
  all_scores = jnp.concatenate([fin_scores, scores], axis=1)
  fin_scores, keep = jax.lax.top_k(all_scores, k)
  take = lambda x: jnp.take_along_axis(x, keep.reshape(keep.shape + (1,) * (x.ndim - 2)),
                                       axis=1)
  finished = (take(jnp.concatenate([fin_seq, seqs], axis=1)),
              take(jnp.concatenate([fin_logp, top_logp], axis=1)), fin_scores,
              take(jnp.concatenate([fin_flags, is_eos], axis=1)))
  return ((new_alive_seq, new_alive_logp, *finished),
          jnp.take_along_axis(origin, pick, axis=1))


def best_beams(alive_seq, alive_logp, fin_seq, fin_logp, fin_scores, fin_flags, k: int):
  """The k best of a beam search's finished and alive hypotheses [b, k, len]:
  finished ones first (by penalised score), then alive ones fill the remaining
  slots; a row where nothing finished returns its alive beams (T5X)."""
  alive_key = jnp.where(alive_logp > NEG_INF / 2, alive_logp - 1e6, 2 * NEG_INF)
  keys = jnp.concatenate([jnp.where(fin_flags, fin_scores, 3 * NEG_INF), alive_key], 1)
  _, order = jax.lax.top_k(keys, k)
  seqs = jnp.take_along_axis(jnp.concatenate([fin_seq, alive_seq], 1), order[:, :, None],
                             axis=1)
  logp = jnp.take_along_axis(jnp.concatenate([fin_logp, alive_logp], 1), order, axis=1)
  return seqs, logp                                           # [b, k, len], [b, k]


def generate(config: T5Config, params: Any, encoder_input_tokens: Array, *,
             max_decode_length: int, method: str = 'greedy', temperature: float = 1.0,
             topk: int = 0, topp: float = 0.0, rng: Optional[Array] = None, seed: int = 0,
             num_beams: Optional[int] = None, beam_size: Optional[int] = None,
             alpha: Optional[float] = None, brevity_penalty: Optional[float] = None,
             return_all_beams: bool = False, return_topk: int = 0,
             prompt_lengths: Optional[Array] = None,
             encoder_segment_ids: Optional[Array] = None,
             num_segments: Optional[int] = None,
             prefix_lm: bool = False) -> tuple[Array, ...]:
  """Decodes `encoder_input_tokens` [batch, len].

  Packed encoder rows (greedy / sample): with `encoder_segment_ids` [R, len]
  (1, 2, … per example, 0 padding) and `num_segments` S (the most examples a
  row holds), the encoder runs once over the packed rows and every example is
  decoded on its own: the outputs have R·S rows, row r·S + (s − 1) for segment
  s of packed row r (all 0 where row r has no segment s), equal to decoding
  each example alone.

  With a `DecoderOnlyConfig` the tokens are left-aligned prompts with
  `prompt_lengths` [batch] and `decoder_only_decoding.generate` runs (greedy /
  sample / beam; tokens after EOS are the config's pad id; `prefix_lm`: the
  prompt attends bidirectionally, as a prefix-LM student was trained).

  Args:
    method: 'greedy', 'sample' (temperature, topk, topp, rng / seed) or 'beam'
      (num_beams / beam_size, default 4; alpha / brevity_penalty, default 0.6).
    return_topk: greedy / sample only: also return, per generated position, the
      model's top-k next-token ids and log-probs (untempered log-softmax, best
      first; 0 after the sequence ended), collected while decoding: what
      `topk_scores` gives teacher-forced on the generated tokens.

  Returns:
    tokens [batch, max_decode_length] int32 (0 after EOS) and the per-sequence
    log-probs [batch] float32; with `return_all_beams` (beam only) tokens
    [batch, beams, max_decode_length] and log-probs [batch, beams], best first;
    with `return_topk`, also top-k ids [batch, max_decode_length, k] int32 and
    log-probs [batch, max_decode_length, k] float32.
  """
  if isinstance(config, DecoderOnlyConfig):
    from distill_sbs.models import decoder_only_decoding  # pylint: disable=g-import-not-at-top
    return decoder_only_decoding.generate(
        config, params, encoder_input_tokens, max_decode_length=max_decode_length,
        prompt_lengths=prompt_lengths, method=method, temperature=temperature, topk=topk,
        topp=topp, rng=rng, seed=seed, num_beams=num_beams or beam_size,
        alpha=alpha if alpha is not None else brevity_penalty,
        return_all_beams=return_all_beams, return_topk=return_topk, prefix_lm=prefix_lm)
  if prompt_lengths is not None or prefix_lm:
    raise ValueError('prompt_lengths and prefix_lm are for decoder-only configs')
  params = _unwrap(params)
  inputs = jnp.asarray(encoder_input_tokens, jnp.int32)
  if inputs.ndim != 2:
    raise ValueError(f'encoder_input_tokens must be [batch, length], got {inputs.shape}')
  if max_decode_length < 1:
    raise ValueError(f'max_decode_length must be >= 1, got {max_decode_length}')
  if encoder_segment_ids is not None:
    if method not in ('greedy', 'sample'):
      raise ValueError(f"generate: packed encoder rows (encoder_segment_ids) decode with "
                       f"'greedy' or 'sample', not {method!r}")
    if not num_segments or int(num_segments) < 1:
      raise ValueError('generate: encoder_segment_ids needs num_segments >= 1 (the most '
                       'examples one packed row holds)')
    encoder_segment_ids = jnp.asarray(encoder_segment_ids, jnp.int32)
    if encoder_segment_ids.shape != inputs.shape:
      raise ValueError(f'generate: encoder_segment_ids shape {encoder_segment_ids.shape} '
                       f'!= encoder_input_tokens shape {inputs.shape}')
  if method in ('greedy', 'sample'):
    if method == 'sample' and rng is None:
      rng = jax.random.PRNGKey(seed)
    if rng is None:
      rng = jax.random.PRNGKey(0)
    tokens, logp, (top_ids, top_lps) = _greedy_or_sample(
        params, inputs, rng, jnp.float32(temperature), config=config,
        max_decode_length=int(max_decode_length), sample=method == 'sample',
        topk=int(topk), topp=float(topp), record_topk=int(return_topk),
        encoder_segment_ids=encoder_segment_ids,
        num_segments=int(num_segments or 0) if encoder_segment_ids is not None else 0)
    if return_topk:
      return tokens, logp, top_ids, top_lps
    return tokens, logp
  if return_topk:
    raise ValueError("return_topk needs method 'greedy' or 'sample'")
  if method == 'beam':
    beams = int(num_beams or beam_size or 4)
    a = alpha if alpha is not None else brevity_penalty
    a = 0.6 if a is None else float(a)
    seqs, logp = _beam_search(params, inputs, jnp.float32(a), config=config,
                              max_decode_length=int(max_decode_length), beams=beams)
    if return_all_beams:
      return seqs, logp
    return seqs[:, 0], logp[:, 0]
  raise ValueError(f"unknown decoding method {method!r}; expected 'greedy', 'sample' "
                   "or 'beam'")


@functools.partial(jax.jit, static_argnames=('config',))
def _logits(params, encoder_input_tokens, decoder_target_tokens, *, config):
  shifted = jnp.pad(decoder_target_tokens, ((0, 0), (1, 0)))[:, :-1]
  logits = Transformer(config).apply({'params': params}, encoder_input_tokens, shifted,
                                     decoder_target_tokens, enable_dropout=False)
  return jax.nn.log_softmax(logits.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=('config',))
def _score(params, encoder_input_tokens, decoder_target_tokens, *, config):
  log_probs = _logits(params, encoder_input_tokens, decoder_target_tokens, config=config)
  token_logp = jnp.take_along_axis(log_probs, decoder_target_tokens[..., None], axis=-1)
  return jnp.where(decoder_target_tokens > 0, token_logp[..., 0], 0.0)


def score(config: T5Config, params: Any, encoder_input_tokens: Array,
          decoder_target_tokens: Array, **decoder_only_options) -> Array:
  """Teacher-forced per-token log-probs [batch, length] (0 where target == 0).

  With a `DecoderOnlyConfig`: the log-probs of the targets continuing the
  left-aligned prompts (`prompt_lengths`, `target_lengths` options; see
  `decoder_only_decoding.score`).
  """
  if isinstance(config, DecoderOnlyConfig):
    from distill_sbs.models import decoder_only_decoding  # pylint: disable=g-import-not-at-top
    return decoder_only_decoding.score(config, params, encoder_input_tokens,
                                       decoder_target_tokens, **decoder_only_options)
  if decoder_only_options:
    raise TypeError(f'score: unexpected options {sorted(decoder_only_options)}')
  return _score(_unwrap(params), jnp.asarray(encoder_input_tokens, jnp.int32),
                jnp.asarray(decoder_target_tokens, jnp.int32), config=config)


@functools.partial(jax.jit, static_argnames=('config', 'k'))
def _topk(params, encoder_input_tokens, decoder_target_tokens, *, config, k):
  log_probs = _logits(params, encoder_input_tokens, decoder_target_tokens, config=config)
  values, ids = jax.lax.top_k(log_probs, k)
  real = (decoder_target_tokens > 0)[..., None]
  return jnp.where(real, ids, 0).astype(jnp.int32), jnp.where(real, values, 0.0)


def topk_scores(config: T5Config, params: Any, encoder_input_tokens: Array,
                decoder_target_tokens: Array, k: int,
                **decoder_only_options) -> tuple[Array, Array]:
  """Teacher-forced top-k next-token ids [b, l, k] int32 and log-probs [b, l, k]
  (log-softmax of the logits, best first; ids 0 and log-probs 0 where target == 0).
  A `DecoderOnlyConfig` goes to `decoder_only_decoding.topk_scores`."""
  if isinstance(config, DecoderOnlyConfig):
    from distill_sbs.models import decoder_only_decoding  # pylint: disable=g-import-not-at-top
    return decoder_only_decoding.topk_scores(config, params, encoder_input_tokens,
                                             decoder_target_tokens, k,
                                             **decoder_only_options)
  if decoder_only_options:
    raise TypeError(f'topk_scores: unexpected options {sorted(decoder_only_options)}')
  return _topk(_unwrap(params), jnp.asarray(encoder_input_tokens, jnp.int32),
               jnp.asarray(decoder_target_tokens, jnp.int32), config=config, k=int(k))
