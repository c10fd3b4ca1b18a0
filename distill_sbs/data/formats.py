"""Per-dataset input formatting and gold labels, shared by tasks and teacher prompts.

Formats (as the paper's released code, `data_utils.py`):
  cqa    '{question}\nAnswer Choices:\n(a) {c0}\n(b) {c1}\n(c) {c2}\n(d) {c3}\n(e) {c4}'
  svamp  '{Body}\n{Question}' (the raw `input` field already has this form)
  esnli, anli1  'Premise: {premise}\nHypothesis: {hypothesis}'
Gold labels: cqa the answer *text* (as the paper), svamp the equation string,
NLI the label name ('entailment' / 'neutral' / 'contradiction').
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from distill_sbs.metrics.accuracy import NLI_LABELS  # the metrics own the label set

DATASETS = ('cqa', 'svamp', 'esnli', 'anli1')
CHOICE_LETTERS = 'abcde'
# Closed label sets; None where the label is open text (cqa answer text is one
# of the row's own choices, svamp labels are equations).
LABELS: dict[str, Optional[tuple[str, ...]]] = {
    'cqa': None,
    'svamp': None,
    'esnli': NLI_LABELS,
    'anli1': NLI_LABELS,
}
# Fields a gold row must have, per dataset.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    'cqa': ('question', 'choices', 'answer'),
    'svamp': ('input', 'label'),
    'esnli': ('premise', 'hypothesis', 'label'),
    'anli1': ('premise', 'hypothesis', 'label'),
}


class RowError(ValueError):
  """A gold row is missing a field or has a bad value."""


def check_dataset(ds: str) -> str:
  if ds not in DATASETS:
    raise ValueError(f'unknown dataset {ds!r}; expected one of {DATASETS}')
  return ds


def _field(ds: str, row: Mapping[str, Any], name: str) -> Any:
  if name not in row or row[name] is None:
    fields = sorted(k for k in row if not k.startswith('__'))
    raise RowError(f'{ds} row is missing field {name!r} (has {fields})')
  return row[name]


def format_choices(choices: Sequence[str]) -> str:
  """'Answer Choices:\n(a) x\n(b) y ...' (CQA)."""
  if len(choices) > len(CHOICE_LETTERS):
    raise RowError(f'at most {len(CHOICE_LETTERS)} choices, got {len(choices)}')
  lines = [f'({CHOICE_LETTERS[i]}) {c}' for i, c in enumerate(choices)]
  return 'Answer Choices:\n' + '\n'.join(lines)


def format_input(ds: str, row: Mapping[str, Any]) -> str:
  """The model input text of one gold row (no task prefix)."""
  check_dataset(ds)
  if ds == 'cqa':
    choices = _field(ds, row, 'choices')
    if not isinstance(choices, (list, tuple)) or len(choices) != 5:
      raise RowError(f"cqa row field 'choices' must be a list of 5, got {choices!r}")
    return f"{_field(ds, row, 'question')}\n{format_choices(choices)}"
  if ds == 'svamp':
    if 'input' in row or 'Body' not in row:
      return str(_field(ds, row, 'input'))
    return f"{_field(ds, row, 'Body')}\n{_field(ds, row, 'Question')}"
  return (f"Premise: {_field(ds, row, 'premise')}\n"
          f"Hypothesis: {_field(ds, row, 'hypothesis')}")


def gold_label(ds: str, row: Mapping[str, Any]) -> str:
  """The gold label text of one row (see module docstring)."""
  check_dataset(ds)
  if ds == 'cqa':
    return str(_field(ds, row, 'answer'))
  if ds == 'svamp':
    if 'Equation' in row and 'label' not in row:  # SVAMP.json layout
      return str(row['Equation'])
    return str(_field(ds, row, 'label'))
  lab = _field(ds, row, 'label')
  if isinstance(lab, bool) or not isinstance(lab, (int, str)):
    raise RowError(f'{ds} row field label must be 0/1/2 or a name, got {lab!r}')
  if isinstance(lab, int):
    if not 0 <= lab < len(NLI_LABELS):
      raise RowError(f'{ds} row field label must be 0, 1 or 2, got {lab}')
    return NLI_LABELS[lab]
  if lab not in NLI_LABELS:
    raise RowError(f'{ds} row field label must be one of {NLI_LABELS}, got {lab!r}')
  return lab


def row_id(ds: str, row: Mapping[str, Any], split: str, index: int) -> str:
  """A stable id: the dataset's own id where it has one, else '{split}-{index}'."""
  for key in ('id', 'uid', 'ID'):
    if row.get(key):
      return str(row[key])
  return f'{ds}-{split}-{index:06d}'


def format_completion(ds: str, rationale: str, label: str,
                      row: Optional[Mapping[str, Any]] = None) -> str:
  """A teacher-style completion (few-shot exemplar answer) that `parsers` parses back.

  For cqa, `row` (with 'choices') supplies the letter of `label`.
  """
  check_dataset(ds)
  rationale = rationale.rstrip()
  if ds == 'cqa':
    letter = ''
    if row is not None and label in list(row.get('choices', [])):
      letter = f'({CHOICE_LETTERS[list(row["choices"]).index(label)]}) '
    return f'{rationale} So the answer is {letter}{label}.'
  if ds == 'svamp':
    eq = label if label.startswith('(') else f'({label})'
    return f'{rationale} The answer is {eq}.'
  if ds == 'anli1':
    return f'{rationale} So the answer is {label}.'
  return f'{rationale}\nAnswer: {label}'
