"""Rank classification over candidate label sequences with a table scorer."""
import numpy as np
import pytest

from distill_sbs.metrics import calibration, rank_classification as rc


def _table_score_fn(table):
  """log-prob of target token t given input row id x: table[x, t] (per token)."""
  calls = []

  def fn(enc, tgt):
    calls.append(enc.shape[0])
    return table[enc[:, :1], tgt] * (tgt != 0)
  return fn, calls


def test_rank_classification_matches_hand_computation(tmp_path):
  rng = np.random.default_rng(0)
  table = np.log(rng.dirichlet(np.ones(8), size=5))  # [inputs, vocab]
  inputs = np.array([[1, 0], [2, 3], [4, 0], [0 + 3, 1]])  # first token picks the row
  cands = np.array([[5, 1, 0], [6, 7, 1], [2, 1, 0]])  # [C, Lt], padded
  gold = np.array([0, 1, 2, 1])
  fn, calls = _table_score_fn(table)
  res = rc.rank_classify(fn, inputs, cands, gold, batch_size=5)
  assert calls == [5, 5, 2]  # 4 inputs × 3 candidates in chunks of 5
  want = np.array([[table[x, c[c != 0]].sum() for c in cands] for x in inputs[:, 0]])
  np.testing.assert_allclose(res.log_probs, want)
  probs = np.exp(want) / np.exp(want).sum(1, keepdims=True)
  np.testing.assert_allclose(res.probabilities, probs)
  np.testing.assert_array_equal(res.predictions, want.argmax(1))
  report = rc.calibration_report(fn, inputs, cands, gold, num_bins=5,
                                 reliability_png=str(tmp_path / 'r.png'))
  correct = want.argmax(1) == gold
  assert report['accuracy'] == pytest.approx(100 * correct.mean())
  assert report['ece'] == pytest.approx(calibration.ece(probs.max(1), correct, num_bins=5))
  assert report['mce'] == pytest.approx(calibration.mce(probs.max(1), correct, num_bins=5))
  assert report['brier'] == pytest.approx(calibration.brier(probs, gold))
  assert (tmp_path / 'r.png').read_bytes()[:4] == b'\x89PNG'


def test_per_example_candidates_and_errors():
  table = np.log(np.full((3, 4), 0.25))
  table[1, 2] = np.log(0.7)
  fn, _ = _table_score_fn(table)
  cands = np.array([[[1, 0], [2, 0]], [[3, 0], [2, 2]]])  # [n=2, C=2, Lt=2]
  res = rc.rank_classify(fn, np.array([[1], [1]]), cands, [1, 0])
  np.testing.assert_array_equal(res.predictions, [1, 1])  # .7 > .25; .7·.7 = .49 > .25
  np.testing.assert_allclose(res.probabilities[0], [0.25 / 0.95, 0.7 / 0.95])
  np.testing.assert_allclose(res.probabilities[1], [0.25 / 0.74, 0.49 / 0.74])
  assert res.correct.tolist() == [True, False]
  with pytest.raises(ValueError, match='gold_index'):
    rc.rank_classify(fn, np.array([[1]]), cands[0], [2])
  with pytest.raises(ValueError, match='empty'):
    rc.rank_classify(fn, np.array([[1]]), np.array([[1], [0]]), [0])
