"""UL2 denoising building blocks as TensorFlow ops (stateless, seeded).

Written after T5's `random_spans_noise_mask` / `noise_span_to_unique_sentinel`
(t5.data.preprocessors, Apache-2.0), with stateless RNG so that every function
runs eagerly and inside `tf.data` and gives the same result for the same seed.

Sentinels follow T5: the i-th corrupted span is replaced by `vocab_size - 1 - i`
(`<extra_id_i>`), in the inputs and, before the span's tokens, in the targets.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import tensorflow as tf

SeedLike = Union[int, tf.Tensor, np.ndarray, tuple, list]


def as_seed(seed: SeedLike) -> tf.Tensor:
  """An int64 [2] stateless seed from an int or a pair."""
  seed = tf.convert_to_tensor(seed)
  if not seed.dtype.is_integer:
    raise TypeError(f'seed must be an integer or a pair of integers, got {seed.dtype}')
  seed = tf.cast(seed, tf.int64)
  if seed.shape.rank == 0:
    return tf.stack([seed, tf.constant(0, tf.int64)])
  return tf.reshape(seed, [2])


def split_seed(seed: SeedLike, num: int) -> list[tf.Tensor]:
  """`num` independent stateless seeds derived from `seed`."""
  return tf.unstack(tf.random.experimental.stateless_split(as_seed(seed), num))


def check_span_params(noise_density: float, mean_noise_span_length: float) -> None:
  if not 0.0 < noise_density < 1.0:
    raise ValueError(f'noise_density must be in (0, 1), got {noise_density}')
  if mean_noise_span_length < 1.0:
    raise ValueError(
        f'mean_noise_span_length must be >= 1, got {mean_noise_span_length}')


def span_counts(length: int, noise_density: float, mean_noise_span_length: float,
                max_spans: Optional[int] = None) -> tuple[int, int]:
  """(num_noise_tokens, num_noise_spans) for `length` tokens, in Python.

  Mirrors `random_spans_noise_mask` exactly (float32 arithmetic, round half to
  even), so length budgets computed here hold for the TF op.
  """
  length = max(int(length), 2)
  noise = int(np.round(np.float32(length) * np.float32(noise_density)))
  noise = min(max(noise, 1), length - 1)
  spans = int(np.round(np.float32(noise) / np.float32(mean_noise_span_length)))
  spans = min(max(spans, 1), length - noise)
  if max_spans:
    spans = min(spans, int(max_spans))
  return noise, spans


def corrupted_lengths(length: int, noise_density: float,
                      mean_noise_span_length: float,
                      max_spans: Optional[int] = None) -> tuple[int, int]:
  """(inputs length, targets length) of `span_corruption` on `length` tokens."""
  if length <= 1:
    return length, length
  noise, spans = span_counts(length, noise_density, mean_noise_span_length,
                             max_spans)
  return length - noise + spans, noise + spans


def max_span_corruption_length(inputs_budget: int, targets_budget: int,
                               noise_density: float,
                               mean_noise_span_length: float,
                               max_spans: Optional[int] = None) -> int:
  """The longest raw length whose corrupted inputs/targets fit the budgets."""
  check_span_params(noise_density, mean_noise_span_length)
  best = 0
  # Both lengths are non-decreasing in the raw length, so scan upwards.
  for n in range(1, inputs_budget + targets_budget + 1):
    i, t = corrupted_lengths(n, noise_density, mean_noise_span_length, max_spans)
    if i > inputs_budget or t > targets_budget:
      break
    best = n
  return best


def _random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor,
                         seed: tf.Tensor) -> tf.Tensor:
  """Splits `num_items` into `num_segments` random non-empty segments: [num_segments]."""
  first_in_segment = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
  order = tf.argsort(tf.random.stateless_uniform([num_items - 1], seed=seed))
  first_in_segment = tf.pad(tf.gather(first_in_segment, order), [[1, 0]])
  segment_id = tf.cumsum(first_in_segment)  # [num_items]
  return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)


def random_spans_noise_mask(length: Any, noise_density: Any,
                            mean_noise_span_length: Any, seed: SeedLike,
                            max_spans: Optional[int] = None) -> tf.Tensor:
  """Boolean noise mask [length]: spans alternate non-noise, noise, ...

  The number of noise tokens is round(length * noise_density) (at least 1,
  at most length - 1) and the number of spans round(noise / mean span), both as
  in T5; `max_spans` caps the spans (so sentinels stay within the extra ids).
  `noise_density` / `mean_noise_span_length` may be float32 scalar tensors.
  """
  if not tf.is_tensor(noise_density) and not tf.is_tensor(mean_noise_span_length):
    check_span_params(noise_density, mean_noise_span_length)
  noise_density = tf.cast(noise_density, tf.float32)
  mean_noise_span_length = tf.cast(mean_noise_span_length, tf.float32)
  orig_length = tf.cast(length, tf.int32)
  length = tf.maximum(orig_length, 2)
  noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  noise = tf.minimum(tf.maximum(noise, 1), length - 1)
  spans = tf.cast(tf.round(tf.cast(noise, tf.float32) / mean_noise_span_length),
                  tf.int32)
  spans = tf.minimum(tf.maximum(spans, 1), length - noise)
  if max_spans:
    spans = tf.minimum(spans, int(max_spans))
  noise_seed, nonnoise_seed = split_seed(seed, 2)
  noise_lengths = _random_segmentation(noise, spans, noise_seed)
  nonnoise_lengths = _random_segmentation(length - noise, spans, nonnoise_seed)
  interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1),
                           [spans * 2])
  span_starts = tf.cumsum(interleaved)[:-1]
  start_indicator = tf.math.unsorted_segment_sum(
      tf.ones_like(span_starts), span_starts, length)
  is_noise = tf.equal(tf.cumsum(start_indicator) % 2, 1)  # [length]
  return is_noise[:orig_length]


def spans_to_sentinels(tokens: tf.Tensor, noise_mask: tf.Tensor,
                       vocab_size: int) -> tf.Tensor:
  """Replaces each masked span by one sentinel (`vocab_size - 1 - i`)."""
  prev_noise = tf.pad(noise_mask[:-1], [[1, 0]])
  first = tf.logical_and(noise_mask, tf.logical_not(prev_noise))
  subsequent = tf.logical_and(noise_mask, prev_noise)
  sentinel = vocab_size - tf.cumsum(tf.cast(first, tokens.dtype))
  tokens = tf.where(first, sentinel, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(subsequent))


def _check_tokens(tokens: Any) -> tf.Tensor:
  tokens = tf.convert_to_tensor(tokens)
  if tokens.shape.rank != 1:
    raise ValueError(f'tokens must be a 1-D tensor, got shape {tokens.shape}')
  if not tokens.dtype.is_integer:
    raise TypeError(f'tokens must be integers, got {tokens.dtype}')
  return tf.cast(tokens, tf.int32)


def span_corruption(tokens: Any, *, noise_density: Any,
                    mean_noise_span_length: Any, vocab_size: int,
                    seed: SeedLike,
                    max_spans: Optional[int] = None) -> dict[str, tf.Tensor]:
  """T5 span corruption of a 1-D int32 `tokens` tensor (no EOS).

  Returns {'inputs': [n_in], 'targets': [n_tg]}: inputs keep the non-noise
  tokens with the i-th noise span replaced by `vocab_size - 1 - i`; targets hold
  each sentinel followed by the span it replaced.
  """
  tokens = _check_tokens(tokens)
  mask = random_spans_noise_mask(tf.size(tokens), noise_density,
                                 mean_noise_span_length, seed, max_spans)
  return {
      'inputs': spans_to_sentinels(tokens, mask, vocab_size),
      'targets': spans_to_sentinels(tokens, tf.logical_not(mask), vocab_size),
  }


def prefix_lm(tokens: Any, *, seed: SeedLike,
              max_inputs_length: Optional[int] = None,
              max_targets_length: Optional[int] = None) -> dict[str, tf.Tensor]:
  """Prefix LM (S-denoiser): a uniformly random split point.

  The split k is drawn from [max(1, n - max_targets), min(n - 1, max_inputs)],
  so both halves fit their budgets whenever n <= max_inputs + max_targets;
  inputs = tokens[:k], targets = tokens[k:].
  """
  tokens = _check_tokens(tokens)
  n = tf.size(tokens)
  hi = n - 1 if max_inputs_length is None else tf.minimum(n - 1, max_inputs_length)
  lo = 1 if max_targets_length is None else tf.maximum(1, n - max_targets_length)
  lo = tf.minimum(lo, hi)
  k = tf.random.stateless_uniform([], seed=as_seed(seed), minval=0,
                                  maxval=tf.int32.max, dtype=tf.int32)
  k = lo + k % tf.maximum(hi - lo + 1, 1)
  k = tf.maximum(k, 0)
  return {'inputs': tokens[:k], 'targets': tokens[k:]}


def merge_spans(inputs: Any, targets: Any, vocab_size: int,
                num_sentinels: int) -> np.ndarray:
  """Inverse of `span_corruption` (numpy): puts target spans back in place."""
  inputs = np.asarray(inputs).tolist()
  targets = np.asarray(targets).tolist()
  lowest = vocab_size - num_sentinels
  spans: dict[int, list[int]] = {}
  current = None
  for t in targets:
    if lowest <= t < vocab_size:
      current = t
      spans[current] = []
    elif current is None:
      raise ValueError(f'targets start with non-sentinel token {t}')
    else:
      spans[current].append(t)
  out: list[int] = []
  for t in inputs:
    if lowest <= t < vocab_size:
      if t not in spans:
        raise ValueError(f'sentinel {t} in inputs has no span in targets')
      out.extend(spans.pop(t))
    else:
      out.append(t)
  # A 1-token sequence is all non-noise: its targets are one empty span.
  left = sorted(k for k, v in spans.items() if v)
  if left:
    raise ValueError(f'target spans {left} have no sentinel in inputs')
  return np.asarray(out, np.int32)
