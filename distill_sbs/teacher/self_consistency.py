"""Self-consistency: majority vote over the parsed labels of n samples."""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Optional, Sequence

from distill_sbs.data import parsers
from distill_sbs.metrics import accuracy
from distill_sbs.metrics import svamp


def label_key(ds: str, label: str) -> str:
  """Labels that mean the same answer share a key (svamp: the equation's value)."""
  if ds == 'svamp':
    value = svamp.evaluate_equation(label)
    if value is not None:
      return f'={value}'
  return accuracy.normalize_answer(label)


def labels_agree(ds: str, gold: str, predicted: str) -> bool:
  """Teacher label vs gold label (svamp: numeric equality of the equations)."""
  if ds == 'svamp':
    return bool(svamp.equations_equal(gold, predicted))
  return accuracy.normalize_answer(gold) == accuracy.normalize_answer(predicted)


@dataclasses.dataclass(frozen=True)
class Vote:
  index: int                          # the kept sample
  parsed: parsers.ParsedCompletion    # its parse
  vote_share: float                   # winner's votes / number of samples
  votes: dict                         # label key -> count


def vote(ds: str, texts: Sequence[str],
         parse: Optional[Callable[[str, str], parsers.ParsedCompletion]] = None) -> Vote:
  """Majority label over parsable samples; ties go to the label seen first.

  Keeps the first sample whose label agrees with the vote. With no parsable
  sample, keeps sample 0 (a parse failure) with vote share 0.
  """
  if not texts:
    raise ValueError('vote() needs at least one sample')
  parse = parse or parsers.parse_completion
  parsed = [parse(ds, t) for t in texts]
  keys = [label_key(ds, p.label) if p.ok else None for p in parsed]
  counts = collections.Counter(k for k in keys if k is not None)
  if not counts:
    return Vote(0, parsed[0], 0.0, {})
  first_seen = {k: keys.index(k) for k in counts}
  winner = max(counts, key=lambda k: (counts[k], -first_seen[k]))
  index = first_seen[winner]
  return Vote(index, parsed[index], counts[winner] / len(texts), dict(counts))
