"""Small file helpers shared by every package above this one (distill, data,
teacher, training, experiments): the manifest file name and atomic JSON writes."""
from __future__ import annotations

import json
import os
import uuid
from typing import Any, Iterator

MANIFEST = 'manifest.json'  # per records directory: counts, hashes, teacher calibration


def write_json_atomic(path: os.PathLike | str, obj: Any, *, indent: int = 2,
                      sort_keys: bool = False) -> None:
  """Writes `obj` as JSON to `path` via a unique temporary file and `os.replace`
  (readers never see a partial file); creates the parent directory."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    f.write('\n')
  os.replace(tmp, path)


def read_jsonl(path: os.PathLike | str, *, truncated_tail_ok: bool = False
               ) -> Iterator[tuple[int, Any]]:
  """(1-based line number, value) of each non-blank line of a JSON-lines file; a
  bad line raises ValueError naming file and line, except a bad last line when
  `truncated_tail_ok` (a writer killed mid-line), which ends the file."""
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      value = json.loads(line)
    except json.JSONDecodeError as e:
      if truncated_tail_ok and i == len(lines):
        return
      raise ValueError(f'{path}:{i}: not JSON ({e.msg})') from None
    yield i, value
