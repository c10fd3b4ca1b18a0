"""Calibration metrics: ECE (equal-width and equal-mass bins), MCE, Brier score.

Inputs are per-prediction confidences in [0, 1] (the probability the model
gave its own prediction) and whether that prediction was correct.

Equal-width bins: bin b covers (b/B, (b+1)/B]; confidence 0 falls in bin 0.
Equal-mass bins: predictions sorted by confidence and split into B groups of
sizes differing by at most one (`numpy.array_split`).
ECE = Σ_b (n_b / N) · |acc_b − conf_b|;  MCE = max over non-empty bins.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np


def _check(confidences: Any, correct: Any, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
  conf = np.asarray(confidences, np.float64).reshape(-1)
  corr = np.asarray(correct, np.float64).reshape(-1)
  if conf.shape != corr.shape:
    raise ValueError(f'confidences ({conf.size}) and correct ({corr.size}) differ in size')
  if conf.size == 0:
    raise ValueError('calibration metrics need at least one prediction')
  if np.any(~np.isfinite(conf)) or np.any(conf < 0) or np.any(conf > 1):
    raise ValueError('confidences must lie in [0, 1]; got range '
                     f'[{np.nanmin(conf)}, {np.nanmax(conf)}]')
  if int(num_bins) < 1:
    raise ValueError(f'num_bins={num_bins} must be >= 1')
  return conf, corr


def equal_width_bin_index(confidences: np.ndarray, num_bins: int) -> np.ndarray:
  """Bin index per prediction: (b/B, (b+1)/B] → b, with 0 → 0."""
  idx = np.ceil(np.asarray(confidences) * num_bins).astype(np.int64) - 1
  return np.clip(idx, 0, num_bins - 1)


def reliability_bins(confidences: Any, correct: Any, *, num_bins: int = 10,
                     equal_mass: bool = False) -> dict[str, np.ndarray]:
  """Per-bin statistics.

  Returns:
    dict with `lower`, `upper` (bin edges; for equal-mass bins the min/max
    confidence inside), `count`, `accuracy`, `confidence` (NaN for empty bins),
    all of shape [num_bins].
  """
  conf, corr = _check(confidences, correct, num_bins)
  if equal_mass:
    order = np.argsort(conf, kind='stable')
    groups = np.array_split(order, num_bins)
  else:
    idx = equal_width_bin_index(conf, num_bins)
    groups = [np.nonzero(idx == b)[0] for b in range(num_bins)]
  count = np.array([g.size for g in groups], np.int64)
  acc = np.array([corr[g].mean() if g.size else np.nan for g in groups])
  mean_conf = np.array([conf[g].mean() if g.size else np.nan for g in groups])
  if equal_mass:
    lower = np.array([conf[g].min() if g.size else np.nan for g in groups])
    upper = np.array([conf[g].max() if g.size else np.nan for g in groups])
  else:
    lower = np.arange(num_bins) / num_bins
    upper = np.arange(1, num_bins + 1) / num_bins
  return {'lower': lower, 'upper': upper, 'count': count, 'accuracy': acc,
          'confidence': mean_conf}


def _gaps(bins: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  nonempty = bins['count'] > 0
  gap = np.abs(bins['accuracy'][nonempty] - bins['confidence'][nonempty])
  return gap, bins['count'][nonempty]


def ece(confidences: Any, correct: Any, *, num_bins: int = 10) -> float:
  """Expected calibration error with equal-width bins, in [0, 1]."""
  gap, n = _gaps(reliability_bins(confidences, correct, num_bins=num_bins))
  return float(np.sum(gap * n) / np.sum(n))


def ece_equal_mass(confidences: Any, correct: Any, *, num_bins: int = 10) -> float:
  """Expected calibration error with equal-mass (adaptive) bins, in [0, 1]."""
  gap, n = _gaps(reliability_bins(confidences, correct, num_bins=num_bins, equal_mass=True))
  return float(np.sum(gap * n) / np.sum(n))


def mce(confidences: Any, correct: Any, *, num_bins: int = 10,
        equal_mass: bool = False) -> float:
  """Maximum calibration error: the largest |accuracy − confidence| of a non-empty bin."""
  gap, _ = _gaps(reliability_bins(confidences, correct, num_bins=num_bins,
                                  equal_mass=equal_mass))
  return float(np.max(gap))


def brier(probabilities: Any, labels: Any) -> float:
  """Brier score.

  Multi-class: `probabilities` [n, C] (rows sum to 1), `labels` [n] int gold
  class → mean over examples of Σ_c (p_c − 1[c = y])² (in [0, 2]).
  Binary: `probabilities` [n] confidence and `labels` [n] in {0, 1} (correct)
  → mean (p − y)².
  """
  p = np.asarray(probabilities, np.float64)
  y = np.asarray(labels)
  if p.ndim == 1:
    if y.shape != p.shape:
      raise ValueError(f'brier: probabilities {p.shape} and labels {y.shape} differ')
    return float(np.mean((p - y.astype(np.float64)) ** 2))
  if p.ndim != 2 or y.shape != (p.shape[0],):
    raise ValueError(f'brier: probabilities must be [n, C] and labels [n]; got {p.shape}, {y.shape}')
  if np.any(y < 0) or np.any(y >= p.shape[1]):
    raise ValueError(f'brier: labels must be class indices in [0, {p.shape[1]})')
  onehot = np.eye(p.shape[1])[y.astype(np.int64)]
  return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def calibration_summary(probabilities: Any, labels: Any, *, num_bins: int = 10,
                        prefix: Optional[str] = None) -> dict[str, float]:
  """accuracy, ece, ece_equal_mass, mce, brier from class probabilities [n, C]."""
  p = np.asarray(probabilities, np.float64)
  y = np.asarray(labels).astype(np.int64)
  pred = p.argmax(axis=1)
  conf = p.max(axis=1)
  correct = (pred == y).astype(np.float64)
  out = {'accuracy': float(correct.mean()),
         'ece': ece(conf, correct, num_bins=num_bins),
         'ece_equal_mass': ece_equal_mass(conf, correct, num_bins=num_bins),
         'mce': mce(conf, correct, num_bins=num_bins),
         'brier': brier(p, y),
         'mean_confidence': float(conf.mean()),
         'num_examples': float(p.shape[0])}
  if prefix:
    out = {f'{prefix}{k}': v for k, v in out.items()}
  return out
