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

Encoder blocks (`block_lengths={'inputs': 4}`, inputs 8): each example's
inputs lie inside one 4-slot block, so attention per block (`T5Config.
encoder_block_length`) equals attention over the row. The row is chosen as
above (among rows where some block fits), the block by best fit:

  a: inputs [3] targets [1]   b: inputs [2] targets [1]   c: inputs [1] targets [1]
  a opens block 0; b only fits block 1; c fits both, block 0 is the fuller
  inputs  [a a a c | b b 0 0]   segment ids [1 1 1 2 | 3 3 0 0] (ids by block)
  targets [a c b 0 0 0]         segment ids [1 2 3 0 0 0]
"""
from __future__ import annotations

from typing import Iterator, Mapping, Optional

import numpy as np
import tensorflow as tf

# Open rows. Rows are emitted as soon as they are closed (no example seen so
# far fits any more); 128 give the cosine rule room to choose (+0.5% real
# slots over 64 on the paired tasks; 256 add < 0.3%).
DEFAULT_NUM_BINS = 128
# With blocks an example has (row, block) places to go and rows close later
# (one block may still take pieces): 256 open rows keep the paired CQA rows as
# full as whole rows (90% / 92% over 12,000 pieces; 128 give 89% / 91%).
DEFAULT_BLOCKED_NUM_BINS = 256


class _Row:
  """One open packed row: its examples and, per blocked feature, their blocks."""

  def __init__(self):
    self.pieces: list[tuple[tuple[int, ...], Mapping[str, np.ndarray]]] = []

  def add(self, ex: Mapping[str, np.ndarray], blocks: tuple[int, ...]) -> None:
    self.pieces.append((blocks, ex))

  def emit(self, lengths: Mapping[str, int], dtypes: Mapping[str, np.dtype],
           block_lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    # Examples ordered by block (stable), so segment ids increase along every
    # feature; without blocks this is the order they came in.
    pieces = sorted(self.pieces, key=lambda p: p[0])
    out = {}
    for k, n in lengths.items():
      values = np.zeros((n,) + pieces[0][1][k].shape[1:], dtypes[k])
      seg = np.zeros(n, np.int32)
      pos = np.zeros(n, np.int32)
      width = block_lengths.get(k, n)
      fill = [j * width for j in range(n // width)]  # next free slot per block
      for i, (blocks, ex) in enumerate(pieces, 1):
        j = blocks[list(block_lengths).index(k)] if k in block_lengths else 0
        m, at = len(ex[k]), fill[j]
        values[at:at + m] = ex[k]
        seg[at:at + m] = i
        pos[at:at + m] = np.arange(m)
        fill[j] += m
      out[k], out[f'{k}_segment_ids'], out[f'{k}_positions'] = values, seg, pos
    return out


def check_block_lengths(lengths: Mapping[str, int],
                        block_lengths: Mapping[str, int]) -> None:
  for k, b in block_lengths.items():
    if k not in lengths:
      raise ValueError(f'block_lengths names feature {k!r}, which is not packed '
                       f'(packed features: {sorted(lengths)})')
    if b <= 0 or lengths[k] % b:
      raise ValueError(f'block length {b} of feature {k!r} must be positive and divide '
                       f'its packed length {lengths[k]}')


def pack_examples(examples: Iterator[Mapping[str, np.ndarray]],
                  lengths: Mapping[str, int], dtypes: Mapping[str, np.dtype],
                  num_bins: Optional[int] = None,
                  block_lengths: Optional[Mapping[str, int]] = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Vector best-fit packing of trimmed examples into rows (module docstring).

  `block_lengths` {feature: b}: that feature's row is cut into blocks of b
  slots and each example's piece lies inside one block (trimmed to b). The
  row is chosen as without blocks (among rows with a block the piece fits),
  the block inside it by best fit (the fullest that fits). A model can then
  attend within blocks (`T5Config.encoder_block_length`) and give the same
  numbers as over whole rows.
  """
  block_lengths = dict(block_lengths or {})
  check_block_lengths(lengths, block_lengths)
  if num_bins is None:
    num_bins = DEFAULT_BLOCKED_NUM_BINS if block_lengths else DEFAULT_NUM_BINS
  keys = list(lengths)
  width = {k: block_lengths.get(k, lengths[k]) for k in keys}  # an unblocked feature: 1 block
  cap = np.array([lengths[k] for k in keys], np.float64)  # [features]
  rows: list[_Row] = []
  used = {k: np.zeros((0, lengths[k] // width[k])) for k in keys}  # [open rows, blocks]
  smallest = None  # [features] the shortest example seen so far, per feature

  def totals():  # [open rows, features] tokens used
    return np.stack([used[k].sum(axis=1) for k in keys], axis=1)

  def drop(i):
    for k in keys:
      used[k] = np.delete(used[k], i, axis=0)

  for ex in examples:
    ex = {k: np.asarray(ex[k])[:width[k]] for k in keys}
    size = np.array([len(ex[k]) for k in keys], np.float64)  # [features]
    fits = np.ones(len(rows), bool)  # [open rows]: some block of every feature fits
    for k, n in zip(keys, size):
      fits &= np.any(used[k] + n <= width[k], axis=1)
    if fits.any():
      # The open row whose free space (fractions) best aligns with the example.
      free = 1.0 - totals() / cap  # [open rows, features]
      cosine = (free @ (size / cap)) / (np.linalg.norm(free, axis=1) + 1e-9)
      i = int(np.argmax(np.where(fits, cosine, -np.inf)))
    else:
      if len(rows) >= num_bins:
        fullest = int(np.argmax((totals() / cap).sum(axis=1)))
        yield rows.pop(fullest).emit(lengths, dtypes, block_lengths)
        drop(fullest)
      rows.append(_Row())
      for k in keys:
        used[k] = np.concatenate([used[k], np.zeros((1, used[k].shape[1]))])
      i = len(rows) - 1
    block = {}
    for k, n in zip(keys, size):
      left = width[k] - used[k][i] - n  # [blocks] slots left after the piece
      block[k] = int(np.argmin(np.where(left >= 0, left, np.inf)))  # the fullest that fits
      used[k][i, block[k]] += n
    rows[i].add(ex, tuple(block[k] for k in block_lengths))
    smallest = size if smallest is None else np.minimum(smallest, size)
    # Closed: no example seen so far would fit any more (in any block); emit
    # it now (rows come out as soon as they are full, not when the pool is).
    most_free = np.array([np.max(width[k] - used[k][i]) for k in keys])  # [features]
    if np.any(most_free < smallest):
      yield rows.pop(i).emit(lengths, dtypes, block_lengths)
      drop(i)
  for row in rows:
    yield row.emit(lengths, dtypes, block_lengths)


def pack_dataset(ds: tf.data.Dataset, lengths: Mapping[str, int],
                 num_bins: Optional[int] = None,
                 block_lengths: Optional[Mapping[str, int]] = None) -> tf.data.Dataset:
  """`pack_examples` over a dataset of variable-length examples (features in
  `lengths`; others are dropped, as seqio's packer drops them)."""
  check_block_lengths(lengths, dict(block_lengths or {}))
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
    yield from pack_examples(only.as_numpy_iterator(), lengths, dtypes, num_bins,
                             block_lengths)
  return tf.data.Dataset.from_generator(gen, output_signature=out_spec)
