"""ECE / MCE / Brier against hand-computed values; reliability PNG."""
import numpy as np
import pytest

from distill_sbs.metrics import calibration, reliability

CONF = np.array([0.05, 0.15, 0.15, 0.55, 0.95, 1.0, 0.0, 0.1])
CORRECT = np.array([0, 1, 0, 1, 0, 1, 0, 1])


def test_ece_hand_computed():
  # Bins (b/10, (b+1)/10]: bin0 {0.05:0, 0.0:0, 0.1:1} |1/3 − 0.05|; bin1 {0.15:1, 0.15:0}
  # |0.5 − 0.15|; bin5 {0.55:1} |1 − 0.55|; bin9 {0.95:0, 1.0:1} |0.5 − 0.975|.
  want = (3 * (1 / 3 - 0.05) + 2 * 0.35 + 0.45 + 2 * 0.475) / 8
  assert want == pytest.approx(0.36875)
  assert calibration.ece(CONF, CORRECT) == pytest.approx(want, abs=1e-12)
  assert calibration.mce(CONF, CORRECT) == pytest.approx(0.475, abs=1e-12)
  # Two equal-width bins: [0, .5] {6 items, 2/6 correct... } computed directly.
  lo = CONF <= 0.5
  want2 = (lo.sum() * abs(CORRECT[lo].mean() - CONF[lo].mean()) +
           (~lo).sum() * abs(CORRECT[~lo].mean() - CONF[~lo].mean())) / 8
  assert calibration.ece(CONF, CORRECT, num_bins=2) == pytest.approx(want2, abs=1e-12)
  assert calibration.ece(CONF, CORRECT, num_bins=1) == pytest.approx(
      abs(CORRECT.mean() - CONF.mean()), abs=1e-12)


def test_ece_equal_mass_hand_computed():
  # Sorted: [0.0:0, 0.05:0, 0.1:1, 0.15:1 | 0.15:0, 0.55:1, 0.95:0, 1.0:1]
  want = (4 * abs(0.5 - 0.075) + 4 * abs(0.5 - 0.6625)) / 8
  assert calibration.ece_equal_mass(CONF, CORRECT, num_bins=2) == pytest.approx(want, abs=1e-12)
  bins = calibration.reliability_bins(CONF, CORRECT, num_bins=2, equal_mass=True)
  np.testing.assert_array_equal(bins['count'], [4, 4])
  np.testing.assert_allclose(bins['lower'], [0.0, 0.15])


def test_reliability_bins_counts():
  bins = calibration.reliability_bins(CONF, CORRECT, num_bins=10)
  np.testing.assert_array_equal(bins['count'], [3, 2, 0, 0, 0, 1, 0, 0, 0, 2])
  assert np.isnan(bins['accuracy'][2])
  np.testing.assert_allclose(bins['accuracy'][[0, 1, 5, 9]], [1 / 3, 0.5, 1.0, 0.5])


def test_perfectly_calibrated_ece_near_zero_and_overconfident_not():
  rng = np.random.default_rng(0)
  conf = rng.uniform(size=100_000)
  correct = rng.uniform(size=conf.size) < conf
  assert calibration.ece(conf, correct) < 0.01
  assert calibration.ece_equal_mass(conf, correct, num_bins=15) < 0.01
  # Accuracy conf² under confidence conf: ECE = E[c − c²] = 1/6.
  over = rng.uniform(size=conf.size) < conf ** 2
  assert calibration.ece(conf, over) == pytest.approx(1 / 6, abs=0.01)


def test_brier_hand_computed():
  p = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]])
  assert calibration.brier(p, [0, 2]) == pytest.approx((0.14 + 0.62) / 2)
  assert calibration.brier([0.9, 0.2], [1, 1]) == pytest.approx((0.01 + 0.64) / 2)
  s = calibration.calibration_summary(p, [0, 2], num_bins=10)
  assert s['accuracy'] == 0.5
  assert s['ece'] == pytest.approx((abs(1 - 0.7) + abs(0 - 0.5)) / 2)


def test_bad_input_raises():
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    calibration.ece([1.2], [1])
  with pytest.raises(ValueError, match='differ in size'):
    calibration.ece([0.2, 0.3], [1])
  with pytest.raises(ValueError, match='class indices'):
    calibration.brier(np.eye(2), [0, 2])


def test_reliability_png(tmp_path):
  rng = np.random.default_rng(1)
  conf = rng.uniform(size=500)
  path = reliability.plot_reliability(conf, rng.uniform(size=500) < conf,
                                      str(tmp_path / 'sub' / 'rel.png'), title='t')
  data = open(path, 'rb').read()
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000
