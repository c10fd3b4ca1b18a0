"""Reading the paper's raw layout with errors that name file and line/index.

Layout (`--raw_dir`): `{ds}/{ds}_{split}.json` (JSON Lines gold rows) and
`{ds}/llm/{split}_CoT_{i}.json` (JSON arrays of completion strings, batch i).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Optional


class RawDataError(ValueError):
  """Malformed raw input; the message names the file and line or index."""


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def gold_path(raw_dir: str, ds: str, split: str) -> str:
  return os.path.join(raw_dir, ds, f'{ds}_{split}.json')


def read_jsonl(path: str, max_rows: Optional[int] = None) -> list[dict[str, Any]]:
  """JSON Lines -> list of objects; blank lines are skipped."""
  rows = []
  with open(path, encoding='utf-8') as f:
    for lineno, line in enumerate(f, start=1):
      if max_rows is not None and len(rows) >= max_rows:
        break
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise RawDataError(f'{path}:{lineno}: malformed JSON line ({e.msg} at '
                           f'column {e.colno})') from None
      if not isinstance(obj, dict):
        raise RawDataError(f'{path}:{lineno}: expected a JSON object, got '
                           f'{type(obj).__name__}')
      obj['__line__'] = lineno
      rows.append(obj)
  return rows


def completion_files(raw_dir: str, ds: str, split: str) -> list[str]:
  """`{split}_CoT_{i}.json` files ordered by i; the indices must be 0..n-1."""
  d = os.path.join(raw_dir, ds, 'llm')
  if not os.path.isdir(d):
    return []
  pat = re.compile(rf'^{re.escape(split)}_CoT_(\d+)\.json$')
  found = sorted((int(m.group(1)), os.path.join(d, n))
                 for n in os.listdir(d) if (m := pat.match(n)))
  idx = [i for i, _ in found]
  if idx != list(range(len(idx))):
    raise RawDataError(f'{d}: {split}_CoT_*.json batch indices {idx} are not '
                       f'0..{len(idx) - 1}')
  return [p for _, p in found]


def read_completions(files: list[str]) -> list[tuple[str, str, int]]:
  """All completions in order, as (text, file, index-in-file)."""
  out = []
  for path in files:
    try:
      with open(path, encoding='utf-8') as f:
        arr = json.load(f)
    except json.JSONDecodeError as e:
      raise RawDataError(f'{path}:{e.lineno}: malformed JSON ({e.msg})') from None
    if not isinstance(arr, list):
      raise RawDataError(f'{path}: expected a JSON array of strings, got '
                         f'{type(arr).__name__}')
    for i, text in enumerate(arr):
      if not isinstance(text, str):
        raise RawDataError(f'{path}[{i}]: completion must be a string, got '
                           f'{type(text).__name__}')
      out.append((text, path, i))
  return out
