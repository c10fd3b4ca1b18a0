"""Temperature scaling recovers a known over-confidence factor."""
import json

import numpy as np
import pytest
import scipy.special

from distill_sbs.distill import temperature as temp


def _synthetic(rng, n=20000, v=50, k=5, scale=2.5):
  """Gold tokens drawn from softmax(z); the teacher reports softmax(scale·z)."""
  z = rng.normal(size=(n, v)) * 1.5
  gold = np.argmax(z + rng.gumbel(size=z.shape), axis=1)
  teacher = scipy.special.log_softmax(scale * z, axis=1)
  ids = np.argsort(-teacher, axis=1)[:, :k]
  lps = np.take_along_axis(teacher, ids, 1).astype(np.float16)  # as stored
  return ids, lps, gold


@pytest.mark.parametrize('scale', [2.5, 0.6])
def test_fit_recovers_known_temperature(scale):
  # 60k tokens, k=10: the estimator's sampling spread is ~0.6% (2% is > 3 sigma).
  rng = np.random.default_rng(int(scale * 10))
  ids, lps, gold = _synthetic(rng, n=60000, k=10, scale=scale)
  fit = temp.fit_temperature(ids, lps, gold)
  assert fit.temperature == pytest.approx(scale, rel=0.02)
  assert fit.nll_after <= fit.nll_before
  assert 0 < fit.num_outside < fit.num_tokens
  if scale > 1:  # an over-confident teacher is better calibrated after scaling
    assert fit.ece_after < fit.ece_before
  # The optimum is a true minimum of the objective (not a grid point).
  pos = temp.gold_positions(ids, gold)
  for t in (fit.temperature * 0.97, fit.temperature * 1.03):
    assert temp.topk_nll(t, lps, pos) > fit.nll_after


def test_gold_positions_and_rest_option():
  ids = np.array([[3, 1, 2], [0, 5, 4]])
  np.testing.assert_array_equal(temp.gold_positions(ids, [2, 7]), [2, -1])
  lps = np.log(np.array([[0.5, 0.3, 0.1], [0.6, 0.2, 0.1]]))
  # rest at T=1: gold outside the top-k gets 1 − Σ top-k = 0.1.
  nll = temp.topk_nll(1.0, lps, np.array([2, -1]), outside='rest')
  assert nll == pytest.approx(-(np.log(0.1) + np.log(0.1)) / 2)
  nll_drop = temp.topk_nll(1.0, lps, np.array([2, -1]), outside='drop')
  assert nll_drop == pytest.approx(-np.log(0.1 / 0.9))
  with pytest.raises(ValueError, match='outside'):
    temp.topk_nll(1.0, lps, np.array([2, -1]), outside='bogus')
  fit = temp.fit_temperature(*_synthetic(np.random.default_rng(3), n=3000), outside='rest')
  assert 0.05 < fit.temperature < 20 and fit.nll_after <= fit.nll_before


def test_manifest_roundtrip(tmp_path):
  (tmp_path / 'manifest.json').write_text(json.dumps({'counts': {'train': 3}}))
  fit = temp.fit_temperature(*_synthetic(np.random.default_rng(4), n=2000))
  temp.write_teacher_temperature(str(tmp_path), fit, split='validation')
  m = json.loads((tmp_path / 'manifest.json').read_text())
  assert m['counts'] == {'train': 3}
  assert m['teacher_temperature'] == fit.temperature
  assert m['teacher_calibration']['split'] == 'validation'
  assert temp.read_teacher_temperature(str(tmp_path)) == fit.temperature
  assert temp.read_teacher_temperature(str(tmp_path / 'nowhere'), default=1.5) == 1.5
  with pytest.raises(FileNotFoundError, match='distill_sbs.calibrate'):
    temp.read_teacher_temperature(str(tmp_path / 'nowhere'))
