"""First-fit packing: several examples per row, far fuller rows than in-order
greedy packing.

seqio's `trim_and_pack_dataset` closes a row as soon as the next example does
not fit in it, so on the step-by-step tasks (a short label row, then a long
rationale row, every feature bounded) rows end 70-80% full. `pack_dataset`
keeps `num_bins` rows open and puts each example into the open row it leaves
fullest among those where every feature fits (best fit); a row that no example
seen so far would still fit into (on some feature) is emitted at once; when no
open row fits an example, the fullest is emitted and a new one started. Output features are seqio's (`{key}`, `{key}_segment_ids`,
`{key}_positions`, zero-padded to the packed length), so the feature
converters' `_convert_example` is unchanged:

  examples  a: inputs [3 tokens] targets [2]    b: inputs [6] targets [5]
            c: inputs [2] targets [1]           (lengths inputs 8, targets 6)
  in order  row 1: a        row 2: b, c?  (c's targets fit, its inputs do not: row 3)
  best-fit  rows a, c (inputs 5/8, targets 3/6) and b; b's row is emitted first:
            after b no example seen so far (the shortest inputs: 3) fits its 2
            free input slots

Examples are trimmed to the lengths first, as seqio does; the order of
examples inside a row, and of rows, is deterministic given the input order.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import tensorflow as tf

# Open rows. Rows are emitted as soon as they are closed (no example seen so
# far fits any more), so more open rows add little: on the paired tasks 64 give
# 86-90% real slots in steady state, 1024 the same within 0.3% (simulated over
# 12,000 rows; benchmarks/packing.py measures the real stream).
DEFAULT_NUM_BINS = 64


class _Row:
  """One open packed row: the pieces of each feature."""

  def __init__(self, keys):
    self.pieces = {k: [] for k in keys}

  def add(self, ex: Mapping[str, np.ndarray]) -> None:
    for k in self.pieces:
      self.pieces[k].append(ex[k])

  def emit(self, lengths: Mapping[str, int], dtypes: Mapping[str, np.dtype]
           ) -> dict[str, np.ndarray]:
    out = {}
    for k, n in lengths.items():
      values = np.zeros((n,) + self.pieces[k][0].shape[1:], dtypes[k])
      seg = np.zeros(n, np.int32)
      pos = np.zeros(n, np.int32)
      at = 0
      for i, piece in enumerate(self.pieces[k], 1):
        m = len(piece)
        values[at:at + m] = piece
        seg[at:at + m] = i
        pos[at:at + m] = np.arange(m)
        at += m
      out[k], out[f'{k}_segment_ids'], out[f'{k}_positions'] = values, seg, pos
    return out


def pack_examples(examples: Iterator[Mapping[str, np.ndarray]],
                  lengths: Mapping[str, int], dtypes: Mapping[str, np.dtype],
                  num_bins: int = DEFAULT_NUM_BINS) -> Iterator[dict[str, np.ndarray]]:
  """Best-fit packing of trimmed examples into rows (see module docstring)."""
  keys = list(lengths)
  cap = np.array([lengths[k] for k in keys], np.float64)  # [features]
  rows: list[_Row] = []
  used = np.zeros((0, len(keys)), np.float64)  # [open rows, features] tokens used
  smallest = None  # [features] the shortest example seen so far, per feature
  for ex in examples:
    ex = {k: np.asarray(ex[k])[:n] for k, n in lengths.items()}
    size = np.array([len(ex[k]) for k in keys], np.float64)
    after = (used + size) / cap  # [open rows, features] fill with ex added
    fits = np.all(after <= 1.0, axis=1)
    if fits.any():
      # Best fit: the open row this example leaves fullest (its tightest feature).
      i = int(np.argmax(np.where(fits, after.max(axis=1), -1.0)))
    else:
      if len(rows) >= num_bins:
        fullest = int(np.argmax((used / cap).sum(axis=1)))
        yield rows.pop(fullest).emit(lengths, dtypes)
        used = np.delete(used, fullest, axis=0)
      rows.append(_Row(keys))
      used = np.concatenate([used, np.zeros((1, len(keys)))])
      i = len(rows) - 1
    rows[i].add(ex)
    used[i] += size
    smallest = size if smallest is None else np.minimum(smallest, size)
    if np.any(cap - used[i] < smallest):
      # Closed: no example seen so far would fit any more; emit it now (rows
      # come out as soon as they are full, not when the pool is).
      yield rows.pop(i).emit(lengths, dtypes)
      used = np.delete(used, i, axis=0)
  for row in rows:
    yield row.emit(lengths, dtypes)


def pack_dataset(ds: tf.data.Dataset, lengths: Mapping[str, int],
                 num_bins: int = DEFAULT_NUM_BINS) -> tf.data.Dataset:
  """`pack_examples` over a dataset of variable-length examples (features in
  `lengths`; others are dropped, as seqio's packer drops them)."""
  spec = ds.element_spec
  missing = [k for k in lengths if k not in spec]
  if missing:
    raise ValueError(f'pack_dataset: the dataset has no feature(s) {missing} '
                     f'(has {sorted(spec)})')
  dtypes = {k: spec[k].dtype.as_numpy_dtype for k in lengths}
  out_spec = {}
  for k, n in lengths.items():
    out_spec[k] = tf.TensorSpec([n] + spec[k].shape.as_list()[1:], spec[k].dtype)
    out_spec[f'{k}_segment_ids'] = tf.TensorSpec([n], tf.int32)
    out_spec[f'{k}_positions'] = tf.TensorSpec([n], tf.int32)
  only = ds.map(lambda ex: {k: ex[k] for k in lengths})

  def gen():
    yield from pack_examples(only.as_numpy_iterator(), lengths, dtypes, num_bins)
  return tf.data.Dataset.from_generator(gen, output_signature=out_spec)
