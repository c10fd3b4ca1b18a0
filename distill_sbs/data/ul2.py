"""UL2 mixture of denoisers (R, X, S) as a SeqIO preprocessor; UL2R presets.

R-denoisers: span corruption, mean span 3 and 8 at rate 0.15, mode `[NLU]`.
X-denoisers: mean span 3 and 8 at rate 0.5, 64 at rates 0.15 and 0.5, `[NLG]`.
S-denoiser: prefix LM with a random split point, `[S2S]`.
(Tay et al. 2022, "UL2"; UL2R: Tay et al. 2022, "Transcending scaling laws with
0.1% extra compute", which continues training on 50% S, 25% R, 25% X.)

The mode token is the vocabulary's encoding of its string, prepended to the
inputs; room for it (and EOS) is reserved in the inputs length. Sentinels are
T5's extra ids, `vocab_size - 1 - i` for the i-th span.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from distill_sbs.data import denoisers as dn
from distill_sbs.data.denoisers import merge_spans, prefix_lm  # noqa: F401  (public)

NLU, NLG, S2S = '[NLU]', '[NLG]', '[S2S]'
MODE_TOKENS = (NLU, NLG, S2S)
R_SPANS = ((3.0, 0.15), (8.0, 0.15))
X_SPANS = ((3.0, 0.5), (8.0, 0.5), (64.0, 0.15), (64.0, 0.5))


def span_corruption(tokens: Any, *, noise_density: float,
                    mean_noise_span_length: float, vocab_size: int,
                    seed: dn.SeedLike,
                    max_spans: Optional[int] = None) -> dict[str, tf.Tensor]:
  """T5 span corruption; see `denoisers.span_corruption`.

  `tokens` is a 1-D int32 tensor without EOS; returns {'inputs', 'targets'}
  with sentinel `vocab_size - 1 - i` for the i-th span. Stateless in `seed`
  (an int or an int pair); runs eagerly and inside `tf.data`.
  """
  return dn.span_corruption(tokens, noise_density=noise_density,
                            mean_noise_span_length=mean_noise_span_length,
                            vocab_size=vocab_size, seed=seed,
                            max_spans=max_spans)


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """One denoiser of the mixture: span corruption, or prefix LM if `prefix_lm`."""
  name: str
  mode: str
  rate: float
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  prefix_lm: bool = False

  def __post_init__(self):
    if self.rate < 0:
      raise ValueError(f'denoiser {self.name!r}: rate must be >= 0, got {self.rate}')
    if not self.prefix_lm:
      dn.check_span_params(self.noise_density, self.mean_noise_span_length)


@gin.configurable
def make_denoisers(r_rate: float = 0.4, x_rate: float = 0.4,
                   s_rate: float = 0.2) -> tuple[Denoiser, ...]:
  """The UL2 denoisers; each group's rate is split evenly over its members."""
  return _make_denoisers(r_rate, x_rate, s_rate)


def _make_denoisers(r_rate: float, x_rate: float,
                    s_rate: float) -> tuple[Denoiser, ...]:
  if min(r_rate, x_rate, s_rate) < 0 or r_rate + x_rate + s_rate <= 0:
    raise ValueError('make_denoisers: rates must be >= 0 with a positive sum, got '
                     f'r_rate={r_rate}, x_rate={x_rate}, s_rate={s_rate}')
  out = [Denoiser(f'R{int(m)}_{d}', NLU, r_rate / len(R_SPANS), d, m)
         for m, d in R_SPANS]
  out += [Denoiser(f'X{int(m)}_{d}', NLG, x_rate / len(X_SPANS), d, m)
          for m, d in X_SPANS]
  out.append(Denoiser('S', S2S, s_rate, prefix_lm=True))
  return tuple(d for d in out if d.rate > 0)


UL2_DENOISERS = _make_denoisers(0.4, 0.4, 0.2)
UL2R_DENOISERS = _make_denoisers(0.25, 0.25, 0.5)  # U-PaLM
PRESETS = {'ul2': UL2_DENOISERS, 'ul2r': UL2R_DENOISERS}


def get_denoisers(preset: str) -> tuple[Denoiser, ...]:
  if preset not in PRESETS:
    raise ValueError(f'unknown UL2 preset {preset!r}; expected one of {sorted(PRESETS)}')
  return PRESETS[preset]


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Per-denoiser token budgets for given feature lengths."""
  mode_ids: tuple[tuple[int, ...], ...]
  raw_lengths: tuple[int, ...]       # longest raw chunk per denoiser
  inputs_budgets: tuple[int, ...]    # corrupted inputs budget (w/o mode, EOS)
  targets_budget: int


def _eos_room(output_features: Mapping[str, seqio.Feature], key: str) -> int:
  feat = output_features.get(key)
  return 1 if feat is not None and feat.add_eos else 0


def plan(denoisers: Sequence[Denoiser], sequence_length: Mapping[str, int],
         output_features: Mapping[str, seqio.Feature],
         use_mode_tokens: bool = True) -> _Plan:
  """Raw-length budgets so that no output exceeds `sequence_length`."""
  if not sequence_length or 'inputs' not in sequence_length or \
      'targets' not in sequence_length:
    raise ValueError('UL2 denoising needs sequence_length with inputs and '
                     f'targets, got {sequence_length!r}')
  vocab = output_features['inputs'].vocabulary
  targets_budget = sequence_length['targets'] - _eos_room(output_features, 'targets')
  mode_ids, raw, budgets = [], [], []
  for d in denoisers:
    ids = tuple(int(i) for i in vocab.encode(d.mode)) if use_mode_tokens else ()
    ib = sequence_length['inputs'] - _eos_room(output_features, 'inputs') - len(ids)
    if ib < 1 or targets_budget < 1:
      raise ValueError(f'denoiser {d.name!r}: sequence_length {dict(sequence_length)} '
                       f'leaves no room after the mode token ({len(ids)} ids) and EOS')
    if d.prefix_lm:
      n = ib + targets_budget
    else:
      n = dn.max_span_corruption_length(ib, targets_budget, d.noise_density,
                                        d.mean_noise_span_length,
                                        vocab.extra_ids or None)
    if n < 1:
      raise ValueError(f'denoiser {d.name!r}: sequence_length {dict(sequence_length)} '
                       'is too short for one corrupted token')
    mode_ids.append(ids)
    raw.append(n)
    budgets.append(ib)
  return _Plan(tuple(mode_ids), tuple(raw), tuple(budgets), targets_budget)


def split_tokens(dataset: tf.data.Dataset, key: str,
                 chunk_length: int) -> tf.data.Dataset:
  """Splits each `key` sequence into chunks of at most `chunk_length` tokens.

  Other features are dropped; empty sequences are skipped.
  """
  if chunk_length < 1:
    raise ValueError(f'chunk_length must be >= 1, got {chunk_length}')

  @tf.autograph.experimental.do_not_convert
  def to_chunks(ex):
    t = ex[key]
    n = tf.size(t, out_type=tf.int64)
    limits = tf.minimum(tf.range(1, (n + chunk_length - 1) // chunk_length + 1,
                                 dtype=tf.int64) * chunk_length, n)
    return {key: tf.RaggedTensor.from_row_limits(t, limits)}  # [chunks, (len)]

  @tf.autograph.experimental.do_not_convert
  def non_empty(ex):
    return tf.size(ex[key]) > 0

  dataset = dataset.filter(non_empty).map(
      to_chunks, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.unbatch()


def _denoise_one(tokens: tf.Tensor, seed: tf.Tensor,
                 denoisers: Sequence[Denoiser], p: _Plan, vocab_size: int,
                 extra_ids: int) -> dict[str, tf.Tensor]:
  """Picks a denoiser by rate (stateless) and applies it to one sequence.

  Denoiser parameters are gathered from per-denoiser tables, so only one span
  corruption and one prefix-LM graph are traced whatever the mixture.
  """
  choice_seed, noise_seed = dn.split_seed(seed, 2)
  rates = np.asarray([d.rate for d in denoisers], np.float64)
  logits = tf.constant(np.log(rates / rates.sum())[None], tf.float32)  # [1, D]
  index = tf.cast(tf.random.stateless_categorical(
      logits, 1, seed=choice_seed)[0, 0], tf.int32)
  table = lambda values, dtype: tf.gather(tf.constant(values, dtype), index)
  toks = tokens[:table(p.raw_lengths, tf.int32)]

  def span():
    out = dn.span_corruption(
        toks, noise_density=table([d.noise_density for d in denoisers], tf.float32),
        mean_noise_span_length=table([d.mean_noise_span_length for d in denoisers],
                                     tf.float32),
        vocab_size=vocab_size, seed=noise_seed, max_spans=extra_ids or None)
    return out['inputs'], out['targets']

  def prefix():
    out = dn.prefix_lm(toks, seed=noise_seed,
                       max_inputs_length=table(p.inputs_budgets, tf.int32),
                       max_targets_length=p.targets_budget)
    return out['inputs'], out['targets']

  kinds = {d.prefix_lm for d in denoisers}
  if kinds == {True}:
    inputs, targets = prefix()
  elif kinds == {False}:
    inputs, targets = span()
  else:
    inputs, targets = tf.cond(
        table([d.prefix_lm for d in denoisers], tf.bool), prefix, span)
  width = max(len(m) for m in p.mode_ids)
  modes = [list(m) + [0] * (width - len(m)) for m in p.mode_ids]  # [D, width]
  mode = tf.gather(tf.constant(modes, tf.int32, shape=[len(modes), width]),
                   index)[:table([len(m) for m in p.mode_ids], tf.int32)]
  return {'inputs': tf.concat([mode, inputs], 0), 'targets': targets,
          'denoiser_id': index}


@gin.configurable
def mixture_of_denoisers(dataset: tf.data.Dataset,
                         sequence_length: Mapping[str, int],
                         output_features: Mapping[str, seqio.Feature],
                         *, denoisers: Optional[Sequence[Denoiser]] = None,
                         preset: Optional[str] = None,
                         feature_key: str = 'targets',
                         use_mode_tokens: bool = True,
                         chunk_length: Optional[int] = None,
                         seed: Optional[int] = None,
                         emit_denoiser_id: bool = False) -> tf.data.Dataset:
  """UL2 preprocessor: chunk the tokenized `feature_key`, denoise each chunk.

  Each chunk draws one denoiser with probability proportional to its rate,
  statelessly from a per-example seed (from `seed` and the chunk's index when
  given, else from SeqIO's preprocessor seeds). Chunks are at most
  `chunk_length` tokens (default: the shortest denoiser budget, so every chunk
  fits every denoiser); outputs (+ EOS) never exceed `sequence_length`.
  Denoisers: explicit `denoisers`, else `preset` ('ul2' | 'ul2r'), else
  `make_denoisers()` (gin-configurable rates).
  """
  if denoisers is None:
    denoisers = get_denoisers(preset) if preset else make_denoisers()
  denoisers = tuple(denoisers)
  if not denoisers:
    raise ValueError('mixture_of_denoisers: no denoisers')
  p = plan(denoisers, sequence_length, output_features, use_mode_tokens)
  vocab = output_features['inputs'].vocabulary
  vocab_size, extra_ids = int(vocab.vocab_size), int(vocab.extra_ids)
  if extra_ids < 1 and any(not d.prefix_lm for d in denoisers):
    raise ValueError('span-corruption denoisers need sentinels: the inputs '
                     f'vocabulary {vocab} has no extra ids')
  dataset = split_tokens(dataset, feature_key, chunk_length or min(p.raw_lengths))

  def finish(out):
    if not emit_denoiser_id:
      out.pop('denoiser_id')
    return out

  if seed is not None:
    base = dn.as_seed(seed)

    @tf.autograph.experimental.do_not_convert
    def with_index(i, ex):
      s = tf.random.experimental.stateless_fold_in(base, i)
      return finish(_denoise_one(ex[feature_key], s, denoisers, p, vocab_size,
                                 extra_ids))
    return dataset.enumerate().map(with_index,
                                   num_parallel_calls=tf.data.AUTOTUNE)

  @seqio.map_over_dataset(num_seeds=1)
  @tf.autograph.experimental.do_not_convert
  def with_seqio_seed(ex, seed):
    return finish(_denoise_one(ex[feature_key], seed, denoisers, p, vocab_size,
                               extra_ids))
  return with_seqio_seed(dataset)


@gin.configurable
def ul2r_objective(dataset: tf.data.Dataset,
                   sequence_length: Mapping[str, int],
                   output_features: Mapping[str, seqio.Feature],
                   preset: Optional[str] = 'ul2r',
                   seed: Optional[int] = None) -> tf.data.Dataset:
  """The `ul2r_*` tasks' preprocessor: `mixture_of_denoisers` with a preset.

  gin: `ul2r_objective.preset = 'ul2'` for UL2's rates, or `= None` to take
  `make_denoisers.r_rate / x_rate / s_rate`.
  """
  return mixture_of_denoisers(dataset, sequence_length, output_features,
                              preset=preset, seed=seed)


@gin.configurable
def prepend_mode_token(dataset: tf.data.Dataset,
                       output_features: Mapping[str, seqio.Feature],
                       mode: Optional[str] = None,
                       feature_keys: Sequence[str] = ('inputs', 'rationale_inputs')
                       ) -> tf.data.Dataset:
  """Fine-tuning mode switch: prepends the mode token to tokenized inputs.

  `mode` is '[NLU]', '[NLG]', '[S2S]' (or any string; None is a no-op so the
  preprocessor can sit in a task and be switched on from gin). Applies to each
  of `feature_keys` the examples have. Use after tokenization and before
  `append_eos_after_trim`.
  """
  if not mode:
    return dataset
  keys = [k for k in feature_keys if k in dataset.element_spec]
  if not keys:
    raise ValueError(f'prepend_mode_token: examples have none of {tuple(feature_keys)} '
                     f'(they have {sorted(dataset.element_spec)})')
  vocab = output_features[keys[0]].vocabulary
  ids = [int(i) for i in vocab.encode(mode)]
  prefix = tf.constant(ids, tf.int32, shape=[len(ids)])

  @tf.autograph.experimental.do_not_convert
  def add(ex):
    ex = dict(ex)
    for k in keys:
      ex[k] = tf.concat([prefix, tf.cast(ex[k], tf.int32)], 0)
    return ex
  return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)
