"""Reliability diagram (accuracy against confidence per bin) written as PNG."""
from __future__ import annotations

import os
from typing import Any, Optional

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from distill_sbs.metrics import calibration  # noqa: E402


def plot_reliability(confidences: Any, correct: Any, path: str, *, num_bins: int = 10,
                     title: Optional[str] = None) -> str:
  """Writes a reliability diagram with the ECE in the legend; returns `path`.

  Bars: per equal-width bin accuracy; red gap: |accuracy − mean confidence|;
  lower panel: how many predictions fall in each bin.
  """
  bins = calibration.reliability_bins(confidences, correct, num_bins=num_bins)
  err = calibration.ece(confidences, correct, num_bins=num_bins)
  width = 1.0 / num_bins
  centers = bins['lower'] + width / 2
  acc = np.nan_to_num(bins['accuracy'])
  conf = np.where(bins['count'] > 0, bins['confidence'], centers)
  fig, (ax, axc) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True,
                                gridspec_kw={'height_ratios': [3, 1]})
  ax.bar(centers, acc, width=width, edgecolor='black', color='tab:blue',
         label=f'accuracy (ECE={100 * err:.1f}%)')
  ax.bar(centers, conf - acc, bottom=acc, width=width, edgecolor='tab:red', color='tab:red',
         alpha=0.3, hatch='//', label='gap to confidence')
  ax.plot([0, 1], [0, 1], 'k--', lw=1, label='perfect calibration')
  ax.set_ylim(0, 1)
  ax.set_ylabel('accuracy')
  ax.legend(loc='upper left', fontsize=8)
  if title:
    ax.set_title(title)
  axc.bar(centers, bins['count'], width=width, edgecolor='black', color='gray')
  axc.set_xlim(0, 1)
  axc.set_xlabel('confidence')
  axc.set_ylabel('count')
  fig.tight_layout()
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fig.savefig(path, dpi=100, format='png')
  plt.close(fig)
  return path
