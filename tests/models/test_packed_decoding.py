"""Decoding across a packed encoder batch equals decoding each example alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_sbs import models

CFG = models.T5Config(vocab_size=64, emb_dim=32, num_heads=4, num_encoder_layers=2,
                      num_decoder_layers=2, head_dim=8, mlp_dim=64)


@pytest.fixture(scope='module')
def params():
  x = jnp.ones((1, 8), jnp.int32)
  return models.Transformer(CFG).init(jax.random.PRNGKey(3), x, x, x,
                                      enable_dropout=False)['params']


def _examples():
  rng = np.random.default_rng(7)
  return [rng.integers(2, 64, n).astype(np.int32) for n in (5, 9, 3, 7, 4)]


def _packed(examples, rows_of):
  """Packed rows [R, 16] and segment ids from `rows_of` (example → row)."""
  r = max(rows_of) + 1
  tokens = np.zeros((r, 16), np.int32)
  seg = np.zeros((r, 16), np.int32)
  used, count = [0] * r, [0] * r
  for ex, row in zip(examples, rows_of):
    count[row] += 1
    tokens[row, used[row]:used[row] + len(ex)] = ex
    seg[row, used[row]:used[row] + len(ex)] = count[row]
    used[row] += len(ex)
  return tokens, seg


def test_packed_greedy_equals_alone(params):
  examples = _examples()
  rows_of = [0, 0, 1, 1, 1]   # row 0: 2 examples, row 1: 3
  tokens, seg = _packed(examples, rows_of)
  out, logp, top_ids, _ = models.generate(CFG, params, tokens, max_decode_length=6,
                                          encoder_segment_ids=seg, num_segments=3,
                                          return_topk=2)
  assert out.shape == (6, 6) and top_ids.shape == (6, 6, 2)
  alone = np.zeros((len(examples), 16), np.int32)
  for i, ex in enumerate(examples):
    alone[i, :len(ex)] = ex
  ref, ref_logp, ref_top, _ = models.generate(CFG, params, alone, max_decode_length=6,
                                              return_topk=2)
  # Row r·S + (s − 1) is segment s of packed row r.
  where = [0, 1, 3, 4, 5]
  np.testing.assert_array_equal(np.asarray(out)[where], ref)
  np.testing.assert_allclose(np.asarray(logp)[where], ref_logp, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(top_ids)[where], ref_top)
  # Packed row 0 has no third segment: its output row is empty.
  assert not np.asarray(out)[2].any() and float(logp[2]) == 0.0


def test_packed_sampling_runs_and_beam_is_refused(params):
  tokens, seg = _packed(_examples(), [0, 0, 1, 1, 1])
  out, _ = models.generate(CFG, params, tokens, max_decode_length=4, method='sample',
                           encoder_segment_ids=seg, num_segments=3, seed=1)
  assert out.shape == (6, 4)
  with pytest.raises(ValueError, match="'greedy' or 'sample'"):
    models.generate(CFG, params, tokens, max_decode_length=4, method='beam',
                    encoder_segment_ids=seg, num_segments=3)
  with pytest.raises(ValueError, match='num_segments'):
    models.generate(CFG, params, tokens, max_decode_length=4, encoder_segment_ids=seg)
