"""Teacher completion -> (rationale, label), per dataset.

Follows the paper's released `data_utils.py` (`_parse_llm_output`):
  cqa    cut at 'Q:' (next few-shot turn); '... So the answer is (x) text.' ->
         label 'text' (trailing '.' dropped)
  svamp  cut at 'Q:'; '... The answer is (equation).' -> label '(equation)'
         (greedy outermost parentheses)
  anli1  cut at 'Premise:'; '... So the answer is label.' -> label (last char dropped)
  esnli  rationale = text before 'Answer:'; label = text after 'Answer: ' up to
         'Premise' (the next turn)
Where the paper's code falls back to ' ' we return `ok=False`, label '' and an
error message; the rationale is kept when it could be separated.
"""
from __future__ import annotations

import dataclasses
import re

from distill_sbs.data import formats


@dataclasses.dataclass(frozen=True)
class ParsedCompletion:
  rationale: str
  label: str
  ok: bool
  error: str = ''


class _Unparsed(Exception):
  """A completion the dataset's format does not fit (keeps what rationale it found)."""

  def __init__(self, rationale: str, error: str):
    super().__init__(error)
    self.rationale, self.error = rationale, error


def _around(text: str, stop: str, marker: str) -> tuple[str, str]:
  """(rationale, tail): `text` cut at `stop` (the next few-shot turn), split at
  its one `marker`."""
  parts = text.split(stop)[0].rstrip().split(marker)
  if len(parts) != 2:
    raise _Unparsed('', f"expected one '{marker}', found {len(parts) - 1}")
  return parts[0].rstrip(), parts[1]


def _nonempty(rationale: str, label: str, error: str) -> tuple[str, str]:
  if not label:
    raise _Unparsed(rationale, error)
  return rationale, label


def _parse_cqa(text: str) -> tuple[str, str]:
  rationale, tail = _around(text, 'Q:', 'So the answer is')
  pieces = re.split(r'\(.\)', tail)
  if len(pieces) < 2:
    raise _Unparsed(rationale, "no '(x)' answer letter after 'So the answer is'")
  label = pieces[1].strip()
  return _nonempty(rationale, label[:-1] if label.endswith('.') else label,
                   'empty answer text')


def _parse_svamp(text: str) -> tuple[str, str]:
  rationale, tail = _around(text, 'Q:', 'The answer is')
  m = re.search(r'\(.*\)', tail)
  if m is None:
    raise _Unparsed(rationale, "no '(equation)' after 'The answer is'")
  return rationale, m.group(0)


def _parse_anli(text: str) -> tuple[str, str]:
  rationale, tail = _around(text, 'Premise:', 'So the answer is')
  return _nonempty(rationale, tail.lstrip()[:-1], 'empty label')


def _parse_esnli(text: str) -> tuple[str, str]:
  rationale = text.split('Answer:')[0].rstrip()
  parts = text.split('Answer: ')
  if len(parts) < 2:
    raise _Unparsed(rationale, "no 'Answer: ' line")
  return _nonempty(rationale, parts[1].split('Premise')[0].rstrip(), 'empty label')


_PARSERS = {'cqa': _parse_cqa, 'svamp': _parse_svamp, 'anli1': _parse_anli,
            'esnli': _parse_esnli}


def parse_completion(ds: str, text: str) -> ParsedCompletion:
  """Splits one raw teacher completion into rationale and label (never raises
  on model text; raises only for an unknown dataset or a non-string)."""
  formats.check_dataset(ds)
  if not isinstance(text, str):
    raise TypeError(f'{ds} completion must be a string, got {type(text).__name__}')
  try:
    rationale, label = _PARSERS[ds](text)
  except _Unparsed as e:
    return ParsedCompletion(rationale=e.rationale, label='', ok=False, error=e.error)
  return ParsedCompletion(rationale, label, True)
