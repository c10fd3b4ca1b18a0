"""Label-task metrics in seqio's `(targets, predictions) -> dict` form.

Accuracies are percentages. `normalize_answer` lowercases, collapses
whitespace and drops surrounding quotes and a trailing period, so
'Wooded area.' matches 'wooded area'. Rationale tasks get no accuracy (seqio's
token-level metrics only; see `tasks/sbs.py`).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

# The NLI label set (e-SNLI, ANLI); `data.NLI_LABELS` is this tuple.
NLI_LABELS = ('entailment', 'neutral', 'contradiction')


def normalize_answer(text: str) -> str:
  if isinstance(text, bytes):
    text = text.decode('utf-8', errors='replace')
  text = re.sub(r'\s+', ' ', str(text)).strip().lower()
  text = text.strip('"\'` ')
  while text.endswith('.'):
    text = text[:-1].rstrip()
  return text


def _check(targets: Sequence, predictions: Sequence) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions')


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """{'accuracy': % of normalised exact matches}."""
  _check(targets, predictions)
  if not targets:
    return {'accuracy': 0.0}
  hits = sum(normalize_answer(t) == normalize_answer(p)
             for t, p in zip(targets, predictions))
  return {'accuracy': 100.0 * hits / len(targets)}


def per_class_accuracy(targets: Sequence[str], predictions: Sequence[str],
                       classes: Optional[Sequence[str]] = None) -> dict:
  """Overall accuracy plus 'accuracy_{class}' (recall of each gold class) and
  'invalid_rate' (% of predictions outside `classes`)."""
  _check(targets, predictions)
  classes = tuple(classes or NLI_LABELS)
  out = dict(exact_match(targets, predictions))
  t_norm = [normalize_answer(t) for t in targets]
  p_norm = [normalize_answer(p) for p in predictions]
  for c in classes:
    idx = [i for i, t in enumerate(t_norm) if t == c]
    if idx:
      out[f'accuracy_{c}'] = 100.0 * sum(p_norm[i] == c for i in idx) / len(idx)
  if targets:
    out['invalid_rate'] = 100.0 * sum(p not in classes for p in p_norm) / len(targets)
  return out


def nli_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """`per_class_accuracy` over entailment / neutral / contradiction."""
  return per_class_accuracy(targets, predictions, NLI_LABELS)


def mean_log_likelihood(targets: Sequence[str], scores: Sequence[float]) -> dict:
  """Token-level score metric (seqio score signature): mean target
  log-likelihood per example, as the model scores it."""
  _check(targets, scores)
  if not len(scores):
    return {'mean_log_likelihood': 0.0}
  return {'mean_log_likelihood': float(sum(float(s) for s in scores) / len(scores))}
