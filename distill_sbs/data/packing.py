"""Vector best-fit packing: several examples per row, far fuller rows than
in-order greedy packing.

seqio's `trim_and_pack_dataset` closes a row as soon as the next example does
not fit in it, so on the step-by-step tasks (a short label row, then a long
rationale row, every feature bounded) rows end 70-80% full. `pack_dataset`
keeps `num_bins` rows open. Each example goes into the open row (among those
where every feature fits) whose free space points most nearly in the
example's direction: the largest cosine between the example's lengths and the
row's free slots, both as fractions of the packed lengths (Panigrahy et al.,
"Heuristics for Vector Bin Packing", 2011). A label piece (long inputs, short
targets) goes where inputs are free, a rationale piece where targets are, so
both features of a row fill together. A row that no example seen so far would
still fit into (on some feature) is emitted at once; when no open row fits an
example, the fullest is emitted and a new one started. Output features are
seqio's (`{key}`, `{key}_segment_ids`, `{key}_positions`, zero-padded to the
packed length), so the feature converters' `_convert_example` is unchanged:

  examples  a: inputs [3 tokens] targets [2]    b: inputs [6] targets [5]
            c: inputs [2] targets [1]           (lengths inputs 8, targets 6)
  in order  row 1: a        row 2: b, c?  (c's targets fit, its inputs do not: row 3)
  packed    rows a, c (inputs 5/8, targets 3/6) and b; b's row is emitted first:
            after b no example seen so far (the shortest inputs: 3) fits its 2
            free input slots

On the paired step-by-step tasks at the dataset parts' lengths this gives
91-95% real encoder and decoder slots in steady state; best fit by the fullest
feature gave 86-93% (benchmarks/packing.py, 3,000 rows of the training stream).

Examples are trimmed to the lengths first, as seqio does; the order of
examples inside a row, and of rows, is deterministic given the input order.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import tensorflow as tf

# Open rows. Rows are emitted as soon as they are closed (no example seen so
# far fits any more); 128 give the cosine rule room to choose (+0.5% real
# slots over 64 on the paired tasks; 256 add < 0.3%).
DEFAULT_NUM_BINS = 128


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
  """Vector best-fit packing of trimmed examples into rows (module docstring)."""
  keys = list(lengths)
  cap = np.array([lengths[k] for k in keys], np.float64)  # [features]
  rows: list[_Row] = []
  used = np.zeros((0, len(keys)), np.float64)  # [open rows, features] tokens used
  smallest = None  # [features] the shortest example seen so far, per feature
  for ex in examples:
    ex = {k: np.asarray(ex[k])[:n] for k, n in lengths.items()}
    size = np.array([len(ex[k]) for k in keys], np.float64)
    fits = np.all(used + size <= cap, axis=1)  # [open rows]
    if fits.any():
      # The open row whose free space (fractions) best aligns with the example.
      free = 1.0 - used / cap  # [open rows, features]
      cosine = (free @ (size / cap)) / (np.linalg.norm(free, axis=1) + 1e-9)
      i = int(np.argmax(np.where(fits, cosine, -np.inf)))
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
