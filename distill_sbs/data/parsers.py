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


def _fail(rationale: str, error: str) -> ParsedCompletion:
  return ParsedCompletion(rationale=rationale, label='', ok=False, error=error)


def _parse_cqa(text: str) -> ParsedCompletion:
  body = text.split('Q:')[0].rstrip()
  parts = body.split('So the answer is')
  if len(parts) != 2:
    return _fail('', f"expected one 'So the answer is', found {len(parts) - 1}")
  rationale, tail = parts[0].rstrip(), parts[1]
  pieces = re.split(r'\(.\)', tail)
  if len(pieces) < 2:
    return _fail(rationale, "no '(x)' answer letter after 'So the answer is'")
  label = pieces[1].strip()
  if label.endswith('.'):
    label = label[:-1]
  if not label:
    return _fail(rationale, 'empty answer text')
  return ParsedCompletion(rationale, label, True)


def _parse_svamp(text: str) -> ParsedCompletion:
  body = text.split('Q:')[0].rstrip()
  parts = body.split('The answer is')
  if len(parts) != 2:
    return _fail('', f"expected one 'The answer is', found {len(parts) - 1}")
  rationale = parts[0].rstrip()
  m = re.search(r'\(.*\)', parts[1])
  if m is None:
    return _fail(rationale, "no '(equation)' after 'The answer is'")
  return ParsedCompletion(rationale, m.group(0), True)


def _parse_anli(text: str) -> ParsedCompletion:
  parts = text.split('Premise:')[0].rstrip().split('So the answer is')
  if len(parts) != 2:
    return _fail('', f"expected one 'So the answer is', found {len(parts) - 1}")
  rationale = parts[0].rstrip()
  label = parts[1].lstrip()[:-1]
  if not label:
    return _fail(rationale, 'empty label')
  return ParsedCompletion(rationale, label, True)


def _parse_esnli(text: str) -> ParsedCompletion:
  rationale = text.split('Answer:')[0].rstrip()
  parts = text.split('Answer: ')
  if len(parts) < 2:
    return _fail(rationale, "no 'Answer: ' line")
  label = parts[1].split('Premise')[0].rstrip()
  if not label:
    return _fail(rationale, 'empty label')
  return ParsedCompletion(rationale, label, True)


_PARSERS = {'cqa': _parse_cqa, 'svamp': _parse_svamp, 'anli1': _parse_anli,
            'esnli': _parse_esnli}


def parse_completion(ds: str, text: str) -> ParsedCompletion:
  """Splits one raw teacher completion into rationale and label (never raises
  on model text; raises only for an unknown dataset or a non-string)."""
  formats.check_dataset(ds)
  if not isinstance(text, str):
    raise TypeError(f'{ds} completion must be a string, got {type(text).__name__}')
  return _PARSERS[ds](text)
