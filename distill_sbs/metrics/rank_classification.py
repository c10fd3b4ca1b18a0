"""Rank classification for label tasks, with calibration metrics.

Each candidate label sequence is scored with teacher forcing (the model's
`score_batch`: the sum of its token log-probs). Prediction = argmax over
candidates; confidence = softmax over the candidates' summed log-probs (so the
candidate set is the event space). `training/evaluation.py` scores the rows;
this module only ranks them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from distill_sbs.metrics import calibration


@dataclasses.dataclass(frozen=True)
class RankResult:
  log_probs: np.ndarray      # [n, C] summed candidate log-probs
  probabilities: np.ndarray  # [n, C] softmax over candidates
  predictions: np.ndarray    # [n] argmax candidate index
  confidences: np.ndarray    # [n] probability of the prediction
  correct: np.ndarray        # [n] bool


def rank(log_probs: Any, gold_index: Any) -> RankResult:
  """Ranks the candidates of every example.

  Args:
    log_probs: [n, C] summed log-probs of each example's candidates.
    gold_index: [n] index of the gold candidate.
  """
  lp = np.asarray(log_probs, np.float64)
  if lp.ndim != 2 or not lp.size:
    raise ValueError(f'log_probs must be a non-empty [n, C] array; got {lp.shape}')
  n, c = lp.shape
  gold = np.asarray(gold_index).astype(np.int64).reshape(-1)
  if gold.shape != (n,) or np.any(gold < 0) or np.any(gold >= c):
    raise ValueError(f'gold_index must be [n={n}] indices in [0, {c}); got '
                     f'shape {gold.shape}, range [{gold.min()}, {gold.max()}]')
  z = lp - lp.max(axis=1, keepdims=True)
  probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  pred = probs.argmax(axis=1)
  return RankResult(log_probs=lp, probabilities=probs, predictions=pred,
                    confidences=probs.max(axis=1), correct=pred == gold)


def rank_classification_metrics(targets: Any, scores: Any, num_bins: int = 10
                                ) -> dict[str, float]:
  """seqio score metric over candidate rows (see `tasks/first.py` rank tasks).

  Args:
    targets: per scored row `(example_index, candidate_index, is_correct)`
      (what the rank tasks' postprocessor returns for targets).
    scores: per row the summed target log-probability (the model's score).
  Returns:
    `calibration.calibration_summary` ('accuracy' in percent), plus
    'num_skipped': examples left out because their candidate set is incomplete (an evaluation cut by
    `num_examples` mid-example) or has no / several correct candidates.
  """
  if len(targets) != len(scores) or not len(targets):
    raise ValueError(f'{len(targets)} targets for {len(scores)} scores')
  by_ex: dict[int, dict[int, tuple[bool, float]]] = {}
  for t, s in zip(targets, scores):
    by_ex.setdefault(int(t[0]), {})[int(t[1])] = (bool(t[2]), float(s))
  width = max(len(c) for c in by_ex.values())
  log_probs, gold = [], []
  for ex in sorted(by_ex):
    cands = [by_ex[ex][c] for c in sorted(by_ex[ex])]
    correct = [j for j, (ok, _) in enumerate(cands) if ok]
    if len(cands) != width or len(correct) != 1:
      continue
    log_probs.append([s for _, s in cands])
    gold.append(correct[0])
  skipped = len(by_ex) - len(gold)
  if not gold:
    raise ValueError(f'no example with a complete candidate set and one correct candidate '
                     f'({skipped} skipped)')
  res = rank(log_probs, gold)
  out = calibration.calibration_summary(res.probabilities, np.asarray(gold),
                                        num_bins=num_bins)
  out['accuracy'] = 100.0 * out['accuracy']
  out['num_skipped'] = float(skipped)
  return out
