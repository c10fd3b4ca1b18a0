"""Candidate labels of an example and per-example correctness (the one CQA parser).

CQA inputs end with an 'Answer Choices:' block of '(a) text' lines; the
candidates of a closed-label dataset (NLI) are its label set.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from distill_sbs.metrics import accuracy
from distill_sbs.metrics import svamp

CHOICES_HEADER = 'Answer Choices:'
_CHOICE_RE = re.compile(r'^\(([a-z])\) (.*)$')


def parse_choices(inputs: str) -> list[str]:
  """The '(a) text' choices after the last 'Answer Choices:' line of `inputs`."""
  if isinstance(inputs, bytes):
    inputs = inputs.decode('utf-8', errors='replace')
  tail = inputs.rsplit(CHOICES_HEADER, 1)
  if len(tail) != 2:
    raise ValueError(f'input has no "{CHOICES_HEADER}" block: {inputs[:80]!r}')
  out = [m.group(2).strip() for line in tail[1].strip().splitlines()
         if (m := _CHOICE_RE.match(line.strip()))]
  if not out:
    raise ValueError(f'input lists no choices: {inputs[:80]!r}')
  return out


def candidates(ds: str, inputs: str, labels: Optional[Sequence[str]] = None
               ) -> Optional[list[str]]:
  """Candidate labels of one example: `labels` (a closed label set), the input's
  choices (CQA), else None (open answers, e.g. SVAMP)."""
  if labels:
    return list(labels)
  if ds == 'cqa':
    return parse_choices(inputs)
  return None


def is_correct(ds: str, gold: str, prediction: str) -> bool:
  """Normalised exact match; SVAMP: the equations evaluate equal."""
  if ds == 'svamp':
    return svamp.equations_equal(gold, prediction)
  return accuracy.normalize_answer(gold) == accuracy.normalize_answer(prediction)
