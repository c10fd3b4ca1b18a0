"""data/packing.py: vector best-fit packing, row by row."""
import numpy as np
import pytest
import tensorflow as tf

from distill_sbs.data import packing

LENGTHS = {'inputs': 8, 'targets': 6}
DTYPES = {'inputs': np.int32, 'targets': np.int32}


def _ex(name: int, n_in: int, n_tgt: int) -> dict:
  """An example whose tokens all equal `name` (so rows show who is where)."""
  return {'inputs': np.full(n_in, name, np.int32), 'targets': np.full(n_tgt, name, np.int32)}


def _who(row: dict, key: str = 'inputs') -> list:
  """Example names in a row, in order."""
  tokens, seg = row[key], row[f'{key}_segment_ids']
  return [int(tokens[seg == s][0]) for s in range(1, seg.max() + 1)]


def test_docstring_example():
  rows = list(packing.pack_examples(iter([_ex(1, 3, 2), _ex(2, 6, 5), _ex(3, 2, 1)]),
                                    LENGTHS, DTYPES))
  assert [_who(r) for r in rows] == [[2], [1, 3]]  # b's row closes first
  a_c = rows[1]
  np.testing.assert_array_equal(a_c['inputs'], [1, 1, 1, 3, 3, 0, 0, 0])
  np.testing.assert_array_equal(a_c['inputs_segment_ids'], [1, 1, 1, 2, 2, 0, 0, 0])
  np.testing.assert_array_equal(a_c['inputs_positions'], [0, 1, 2, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(a_c['targets'], [1, 1, 3, 0, 0, 0])
  np.testing.assert_array_equal(a_c['targets_segment_ids'], [1, 1, 2, 0, 0, 0])
  np.testing.assert_array_equal(a_c['targets_positions'], [0, 1, 0, 0, 0, 0])


def test_pieces_go_where_their_feature_is_free():
  """Row A ends with its targets free, row B with its inputs free; an
  inputs-heavy piece then joins B and a targets-heavy piece A, although each
  fits either row (best fit by the fullest feature sends them the other way)."""
  lengths = {'inputs': 20, 'targets': 20}
  stream = [_ex(1, 1, 1), _ex(2, 17, 4),  # A: used 18/20 inputs, 5/20 targets
            _ex(3, 3, 17),                # does not fit A: B, 3/20 and 17/20
            _ex(4, 2, 1),                 # inputs-heavy: B
            _ex(5, 1, 2)]                 # targets-heavy: A
  rows = list(packing.pack_examples(iter(stream), lengths, DTYPES))
  assert [_who(r) for r in rows] == [[1, 2, 5], [3, 4]]


def test_every_token_once_and_rows_within_lengths():
  rng = np.random.default_rng(0)
  stream = [_ex(i + 1, int(rng.integers(1, 9)), int(rng.integers(1, 7))) for i in range(300)]
  rows = list(packing.pack_examples(iter(stream), LENGTHS, DTYPES, num_bins=8))
  seen = []
  for r in rows:
    for key, n in LENGTHS.items():
      assert r[key].shape == (n,)
      seg = r[f'{key}_segment_ids']
      assert np.all(np.diff(seg[seg > 0]) >= 0) and np.all((seg > 0) == (r[key] > 0))
    assert _who(r, 'inputs') == _who(r, 'targets')  # a segment's pieces stay together
    seen += _who(r)
  assert sorted(seen) == list(range(1, 301))
  # Fuller than in-order greedy packing (seqio's), counted here by hand.
  greedy_rows, used = 1, np.zeros(2)
  for ex in stream:
    size = np.array([len(ex['inputs']), len(ex['targets'])])
    if np.any(used + size > [8, 6]):
      greedy_rows, used = greedy_rows + 1, np.zeros(2)
    used += size
  assert len(rows) < 0.9 * greedy_rows, (len(rows), greedy_rows)


def test_pack_dataset_keeps_features_and_names_missing_ones():
  ds = tf.data.Dataset.from_generator(
      lambda: iter([_ex(1, 3, 2), _ex(2, 4, 3)]),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in LENGTHS})
  rows = list(packing.pack_dataset(ds, LENGTHS).as_numpy_iterator())
  assert len(rows) == 1 and _who(rows[0]) == [1, 2]
  with pytest.raises(ValueError, match='no feature'):
    packing.pack_dataset(ds, {'inputs': 8, 'weights': 4})


def test_encoder_blocks_by_hand():
  """inputs 8 in blocks of 4: a (3 tokens) opens block 0, b (2) only fits
  block 1, c (1) fits both and takes block 0, the fuller (best fit); the row
  lists examples by block, so segment ids increase along both features."""
  rows = list(packing.pack_examples(iter([_ex(1, 3, 1), _ex(2, 2, 1), _ex(3, 1, 1)]),
                                    LENGTHS, DTYPES, block_lengths={'inputs': 4}))
  assert len(rows) == 1
  r = rows[0]
  np.testing.assert_array_equal(r['inputs'], [1, 1, 1, 3, 2, 2, 0, 0])
  np.testing.assert_array_equal(r['inputs_segment_ids'], [1, 1, 1, 2, 3, 3, 0, 0])
  np.testing.assert_array_equal(r['inputs_positions'], [0, 1, 2, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(r['targets'], [1, 3, 2, 0, 0, 0])
  np.testing.assert_array_equal(r['targets_segment_ids'], [1, 2, 3, 0, 0, 0])


def test_encoder_blocks_trim_to_a_block_and_check_lengths():
  rows = list(packing.pack_examples(iter([_ex(1, 6, 2)]), LENGTHS, DTYPES,
                                    block_lengths={'inputs': 4}))
  np.testing.assert_array_equal(rows[0]['inputs'], [1, 1, 1, 1, 0, 0, 0, 0])
  with pytest.raises(ValueError, match="block length 3 of feature 'inputs' must be "
                                       'positive and divide its packed length 8'):
    list(packing.pack_examples(iter([_ex(1, 2, 2)]), LENGTHS, DTYPES,
                               block_lengths={'inputs': 3}))
  with pytest.raises(ValueError, match="names feature 'weights', which is not packed"):
    packing.pack_dataset(tf.data.Dataset.from_tensors(_ex(1, 2, 2)), LENGTHS,
                         block_lengths={'weights': 2})
