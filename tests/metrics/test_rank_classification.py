"""Rank classification over summed candidate log-probs."""
import numpy as np
import pytest

from distill_sbs.metrics import calibration, rank_classification as rc


def test_rank_matches_hand_computation():
  rng = np.random.default_rng(0)
  lp = np.log(rng.dirichlet(np.ones(3), size=4))  # [n=4, C=3]
  gold = np.array([0, 1, 2, 1])
  res = rc.rank(lp, gold)
  probs = np.exp(lp) / np.exp(lp).sum(1, keepdims=True)
  np.testing.assert_allclose(res.probabilities, probs)
  np.testing.assert_array_equal(res.predictions, lp.argmax(1))
  np.testing.assert_allclose(res.confidences, probs.max(1))
  assert res.correct.tolist() == (lp.argmax(1) == gold).tolist()


def test_rank_errors():
  with pytest.raises(ValueError, match='gold_index'):
    rc.rank(np.zeros((1, 2)), [2])
  with pytest.raises(ValueError, match=r'\[n, C\]'):
    rc.rank(np.zeros((3,)), [0, 0, 0])


def test_score_metric_equals_calibration_summary():
  lp = np.array([[-1.0, -2.0], [-3.0, -0.5]])
  targets = [(0, 0, True), (0, 1, False), (1, 0, True), (1, 1, False)]
  out = rc.rank_classification_metrics(targets, lp.reshape(-1), num_bins=5)
  want = calibration.calibration_summary(rc.rank(lp, [0, 0]).probabilities, [0, 0],
                                         num_bins=5)
  assert out['accuracy'] == pytest.approx(100 * want['accuracy'])
  assert out['ece'] == pytest.approx(want['ece'])
  assert out['brier'] == pytest.approx(want['brier'])
