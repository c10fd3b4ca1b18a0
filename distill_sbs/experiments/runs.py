"""One experiment run: its identity, its MODEL_DIR, its metrics and done marker.

A run is an ordinary `distill_sbs.train` run in its own MODEL_DIR. The sweep
writes `DONE_FILE` there after the run (and its evaluation) succeeded; a rerun
of the sweep skips runs whose marker matches their spec.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Iterable, Optional

from distill_sbs.distill import io_utils

METRICS_FILE = 'metrics.jsonl'
DONE_FILE = 'sweep_done.json'
EVAL_FILE = 'eval_results.json'


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Identity of one run (the sweep's grid point)."""
  dataset: str
  size: str
  method: str
  fraction: float
  seed: int

  @property
  def run_id(self) -> str:
    pct = format_fraction(self.fraction)
    size = self.size.replace('/', '-')  # a family-qualified size: 'qwen3/tiny'
    return f'{self.dataset}_{size}/{self.method}/frac{pct}/seed{self.seed}'

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> 'RunSpec':
    return cls(dataset=str(d['dataset']), size=str(d['size']),
               method=str(d['method']), fraction=float(d['fraction']),
               seed=int(d['seed']))


def format_fraction(fraction: float) -> str:
  """0.125 -> '12.5', 1.0 -> '100' (percent, no trailing zeros)."""
  if not 0 < fraction <= 1:
    raise ValueError(f'data fraction must be in (0, 1], got {fraction}')
  pct = round(fraction * 100, 6)
  return f'{pct:g}'


def read_metrics(path: os.PathLike | str) -> list[dict[str, Any]]:
  """Reads a `metrics.jsonl` file: one JSON object per line, each with 'step'.

  Blank lines are skipped; a truncated last line (a run killed mid-write) is
  ignored; any other bad line raises ValueError naming file and line.
  """
  records = []
  for i, rec in io_utils.read_jsonl(path, truncated_tail_ok=True):
    if not isinstance(rec, dict) or 'step' not in rec:
      raise ValueError(f'{path}:{i}: expected a JSON object with a "step" field')
    records.append(rec)
  return records


def is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def last_values(records: Iterable[dict[str, Any]]) -> dict[str, float]:
  """The last finite numeric value of every key (the run's final metrics)."""
  out: dict[str, float] = {}
  for rec in records:
    for k, v in rec.items():
      if is_number(v):
        out[k] = float(v)
  return out


def series(records: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of `key` over the records that hold it."""
  steps, values = [], []
  for rec in records:
    if is_number(rec.get(key)):
      steps.append(int(rec['step']))
      values.append(float(rec[key]))
  return steps, values


def read_done(model_dir: os.PathLike | str) -> Optional[dict[str, Any]]:
  path = pathlib.Path(model_dir) / DONE_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: corrupt done marker ({e.msg}); delete it to rerun') from e


def mark_done(model_dir: os.PathLike | str, spec: RunSpec,
              extra: Optional[dict[str, Any]] = None) -> None:
  io_utils.write_json_atomic(pathlib.Path(model_dir) / DONE_FILE,
                             {'spec': spec.to_json(), **(extra or {})})


def is_done(model_dir: os.PathLike | str, spec: RunSpec,
            signature: Optional[dict[str, Any]] = None) -> bool:
  """True when the marker exists and was written for this spec (and signature).

  A marker for another spec or signature (the experiment file changed) raises,
  so a sweep never silently mixes results of two configurations.
  """
  done = read_done(model_dir)
  if done is None:
    return False
  if RunSpec.from_json(done.get('spec', {})) != spec:
    raise ValueError(f'{model_dir}/{DONE_FILE} belongs to {done.get("spec")}, '
                     f'not {spec.to_json()}; use another output_dir')
  if signature is not None and done.get('signature') not in (None, signature):
    raise ValueError(
        f'{model_dir}/{DONE_FILE}: finished with another configuration '
        f'({done.get("signature")} != {signature}); delete the folder to rerun '
        'it, or use another output_dir')
  return True
