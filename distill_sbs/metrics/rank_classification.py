"""Rank classification for label tasks, with calibration metrics.

Each candidate label sequence is scored with teacher forcing; its score is the
sum of its token log-probs. Prediction = argmax over candidates; confidence =
softmax over the candidates' summed log-probs (so the candidate set is the
event space). Every trained student reports accuracy, ECE, MCE and Brier this way.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Protocol

import numpy as np

from distill_sbs.metrics import calibration


class ScoreFn(Protocol):
  """Teacher-forced scorer.

  Args:
    encoder_input_tokens: [n, input_length] int32 (0 = padding).
    decoder_target_tokens: [n, target_length] int32 (0 = padding, EOS included).
  Returns:
    [n, target_length] per-token log-probs (values on padding are ignored).
  """

  def __call__(self, encoder_input_tokens: np.ndarray,
               decoder_target_tokens: np.ndarray) -> np.ndarray:
    ...


@dataclasses.dataclass(frozen=True)
class RankResult:
  log_probs: np.ndarray      # [n, C] summed candidate log-probs
  probabilities: np.ndarray  # [n, C] softmax over candidates
  predictions: np.ndarray    # [n] argmax candidate index
  confidences: np.ndarray    # [n] probability of the prediction
  correct: np.ndarray        # [n] bool


def _candidates(candidate_targets: Any, n: int) -> np.ndarray:
  """Returns [n, C, Lt] candidates from [C, Lt] (shared) or [n, C, Lt]."""
  cand = np.asarray(candidate_targets)
  if cand.ndim == 2:
    cand = np.broadcast_to(cand[None], (n,) + cand.shape)
  if cand.ndim != 3 or cand.shape[0] != n:
    raise ValueError('candidate_targets must be [num_candidates, target_length] or '
                     f'[n, num_candidates, target_length] with n={n}; got {cand.shape}')
  if np.any(np.all(cand == 0, axis=-1)):
    raise ValueError('candidate_targets holds an empty (all-padding) candidate')
  return cand


def rank_classify(score_fn: ScoreFn, inputs_tokens: Any, candidate_targets: Any,
                  gold_index: Any, *, batch_size: int = 64) -> RankResult:
  """Scores every (input, candidate) pair and ranks the candidates.

  Args:
    inputs_tokens: [n, input_length] int encoder inputs.
    candidate_targets: [C, Lt] or [n, C, Lt] int candidate label token ids.
    gold_index: [n] index of the gold candidate.
  """
  inputs = np.asarray(inputs_tokens)
  n = inputs.shape[0]
  cand = _candidates(candidate_targets, n)
  gold = np.asarray(gold_index).astype(np.int64).reshape(-1)
  c = cand.shape[1]
  if gold.shape != (n,) or np.any(gold < 0) or np.any(gold >= c):
    raise ValueError(f'gold_index must be [n={n}] indices in [0, {c}); got '
                     f'shape {gold.shape}, range [{gold.min()}, {gold.max()}]')
  flat_inputs = np.repeat(inputs, c, axis=0).astype(np.int32)  # [n*C, Li]
  flat_targets = cand.reshape(n * c, -1).astype(np.int32)  # [n*C, Lt]
  scores = np.zeros((n * c,), np.float64)
  for start in range(0, n * c, batch_size):
    sl = slice(start, start + batch_size)
    tok = np.asarray(score_fn(flat_inputs[sl], flat_targets[sl]), np.float64)
    if tok.shape != flat_targets[sl].shape:
      raise ValueError(f'score_fn returned shape {tok.shape}; expected '
                       f'{flat_targets[sl].shape} (per-token log-probs)')
    scores[sl] = np.sum(np.where(flat_targets[sl] != 0, tok, 0.0), axis=-1)
  log_probs = scores.reshape(n, c)
  z = log_probs - log_probs.max(axis=1, keepdims=True)
  probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  pred = probs.argmax(axis=1)
  return RankResult(log_probs=log_probs, probabilities=probs, predictions=pred,
                    confidences=probs.max(axis=1), correct=pred == gold)


def calibration_report(score_fn: ScoreFn, inputs_tokens: Any, candidate_targets: Any,
                       gold_index: Any, num_bins: int = 10, *, batch_size: int = 64,
                       reliability_png: Optional[str] = None) -> dict[str, float]:
  """Accuracy and calibration of rank classification, for evaluation hooks.

  Returns:
    {'accuracy' (percent, as `metrics.accuracy`), 'ece', 'ece_equal_mass',
     'mce' (in [0, 1]), 'brier' (multi-class, in [0, 2]), 'mean_confidence',
     'num_examples'}. Writes a reliability diagram when `reliability_png` is set.
  """
  res = rank_classify(score_fn, inputs_tokens, candidate_targets, gold_index,
                      batch_size=batch_size)
  gold = np.asarray(gold_index).astype(np.int64).reshape(-1)
  out = calibration.calibration_summary(res.probabilities, gold, num_bins=num_bins)
  out['accuracy'] = 100.0 * out['accuracy']
  if reliability_png:
    from distill_sbs.metrics import reliability  # matplotlib only when asked
    reliability.plot_reliability(res.confidences, res.correct, reliability_png,
                                 num_bins=num_bins)
  return out


def model_score_fn(config: Any, params: Any,
                   score: Optional[Callable[..., Any]] = None) -> ScoreFn:
  """`ScoreFn` over `distill_sbs.models.score(config, params, enc, targets)`."""
  if score is None:
    from distill_sbs.models import score  # pylint: disable=g-import-not-at-top

  def fn(encoder_input_tokens, decoder_target_tokens):
    return np.asarray(score(config, params, encoder_input_tokens, decoder_target_tokens))
  return fn


def tokenize_candidates(vocabulary: Any, candidates: list[str], *,
                        add_eos: bool = True) -> np.ndarray:
  """[C, Lt] int32 right-padded token ids of candidate label strings."""
  seqs = []
  for text in candidates:
    ids = list(vocabulary.encode(text))
    if add_eos:
      ids.append(vocabulary.eos_id)
    seqs.append(ids)
  out = np.zeros((len(seqs), max(len(s) for s in seqs)), np.int32)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = s
  return out


def rank_classification_metrics(targets: Any, scores: Any, num_bins: int = 10
                                ) -> dict[str, float]:
  """seqio score metric over candidate rows (see `tasks/first.py` rank tasks).

  Args:
    targets: per scored row `(example_index, candidate_index, is_correct)`
      (what the rank tasks' postprocessor returns for targets).
    scores: per row the summed target log-probability (the model's score).
  Returns:
    as `calibration_report` ('accuracy' in percent), plus 'num_skipped': examples
    left out because their candidate set is incomplete (an evaluation cut by
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
  lp = np.asarray(log_probs)
  z = lp - lp.max(axis=1, keepdims=True)
  probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  out = calibration.calibration_summary(probs, np.asarray(gold), num_bins=num_bins)
  out['accuracy'] = 100.0 * out['accuracy']
  out['num_skipped'] = float(skipped)
  return out
