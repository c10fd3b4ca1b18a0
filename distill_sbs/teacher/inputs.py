"""Teacher inputs: prepared records of a dataset split, or a JSON-lines file.

JSON lines: one object per line with either `inputs` (already formatted) or
the raw row fields of the dataset (formatted with `formats.format_input`), and
optional `id` (default `{split}-{line:06d}`) and gold `label` (raw form:
NLI 0/1/2 or names, the svamp equation, the cqa answer text).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from distill_sbs.data import formats
from distill_sbs.data import paths
from distill_sbs.data import schema
from distill_sbs.distill import io_utils


@dataclasses.dataclass(frozen=True)
class Example:
  id: str
  inputs: str
  label: str = ''   # gold, '' when unknown


def load_examples(ds: str, split: str, *, data_dir: Optional[str] = None,
                  input_jsonl: Optional[str] = None, max_examples: int = 0
                  ) -> list[Example]:
  """Inputs in order (the first `max_examples` when > 0); ids must be unique."""
  out: list[Example] = []
  if input_jsonl:
    path = input_jsonl
    for lineno, row in io_utils.read_jsonl(path):
      if not isinstance(row, dict):
        raise ValueError(f'{path}:{lineno}: each line must be a JSON object')
      try:
        inputs = str(row['inputs']) if 'inputs' in row else formats.format_input(ds, row)
        label = ''
        if row.get('label') not in (None, ''):
          label = str(row['label']) if ds == 'cqa' else formats.gold_label(ds, row)
        elif ds == 'cqa' and row.get('answer'):
          label = str(row['answer'])
      except (ValueError, KeyError) as e:
        raise ValueError(f'{path}:{lineno}: {e}') from None
      ex_id = str(row.get('id') or row.get('uid') or f'{split}-{lineno - 1:06d}')
      out.append(Example(ex_id, inputs, label))
      if max_examples and len(out) >= max_examples:
        break
  else:
    pattern = paths.split_pattern(ds, split, data_dir)
    for rec in schema.read_records(pattern):
      out.append(Example(str(rec['id']), rec['inputs'], rec.get('label', '')))
      if max_examples and len(out) >= max_examples:
        break
  seen: set[str] = set()
  for ex in out:
    if ex.id in seen:
      raise ValueError(f'duplicate example id {ex.id!r} in the inputs')
    seen.add(ex.id)
  return out
