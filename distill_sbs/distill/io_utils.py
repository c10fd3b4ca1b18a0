"""Small file helpers shared by every package above this one (distill, data,
teacher, training, experiments): the manifest file name and atomic JSON writes."""
from __future__ import annotations

import json
import os
import uuid
from typing import Any

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
