"""Collects runs' metrics into per-run rows and mean/std over seeds; CSV I/O.

Per-run row: the spec (dataset, size, method, fraction, seed), `final_step`,
the last value of every numeric key of `metrics.jsonl`, the wall seconds the
sweep recorded (`train_seconds`, `eval_seconds`) and the run's test evaluation
(`eval_results.json`) with a `test_` prefix. Output is
deterministic: rows sorted, floats written with `repr`, so recomputing an
aggregate from the same runs gives byte-identical files.
"""
from __future__ import annotations

import csv
import json
import math
import os
import pathlib
from typing import Any, Iterable, Optional, Sequence

from distill_sbs.experiments import runs as runs_lib

SPEC_COLUMNS = ('dataset', 'size', 'method', 'fraction', 'seed')
GROUP_COLUMNS = ('dataset', 'size', 'method', 'fraction')
TEST_PREFIX = 'test_'


def run_row(spec: runs_lib.RunSpec, model_dir: os.PathLike | str) -> dict[str, Any]:
  """One CSV row for a finished run (see module doc)."""
  model_dir = pathlib.Path(model_dir)
  row: dict[str, Any] = dict(spec.to_json())
  metrics_path = model_dir / runs_lib.METRICS_FILE
  if metrics_path.exists():
    records = runs_lib.read_metrics(metrics_path)
    row['final_step'] = max((int(r['step']) for r in records), default=0)
    for k, v in runs_lib.last_values(records).items():
      if k != 'step':
        row[k] = v
  done = runs_lib.read_done(model_dir) or {}
  for k, v in sorted((done.get('wall') or {}).items()):
    if runs_lib.is_number(v):
      row[k] = float(v)  # wall seconds of training / evaluation (sweep marker)
  eval_path = model_dir / runs_lib.EVAL_FILE
  if eval_path.exists():
    try:
      results = json.loads(eval_path.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f'{eval_path}: not JSON ({e.msg})') from e
    for k, v in results.items():
      if runs_lib.is_number(v):
        row[TEST_PREFIX + k] = float(v)
  return row


def collect(items: Iterable[tuple[runs_lib.RunSpec, os.PathLike | str]]
           ) -> list[dict[str, Any]]:
  """Rows of all runs, sorted by spec."""
  rows = [run_row(spec, d) for spec, d in items]
  return sorted(rows, key=_sort_key)


def _sort_key(row: dict[str, Any]) -> tuple:
  return tuple((str(row.get(c, '')) if c not in ('fraction', 'seed')
                else float(row.get(c, 0))) for c in SPEC_COLUMNS if c in row)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
  n = len(values)
  if n == 0:
    return math.nan, math.nan
  mean = math.fsum(values) / n
  if n == 1:
    return mean, 0.0
  var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
  return mean, math.sqrt(var)


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
  """Numeric non-spec columns present in any row, sorted."""
  cols = set()
  for row in rows:
    for k, v in row.items():
      if k not in SPEC_COLUMNS and runs_lib.is_number(v):
        cols.add(k)
  return sorted(cols)


def summarize(rows: Sequence[dict[str, Any]],
              group_columns: Sequence[str] = GROUP_COLUMNS,
              metrics: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
  """Mean and std over seeds per group: columns `{m}_mean`, `{m}_std`, `n_seeds`."""
  metrics = list(metrics) if metrics is not None else metric_columns(rows)
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault(tuple(row[c] for c in group_columns), []).append(row)
  out = []
  for key in sorted(groups, key=lambda g: tuple(
      (float(v) if isinstance(v, (int, float)) else 0.0, str(v)) for v in g)):
    members = groups[key]
    agg: dict[str, Any] = dict(zip(group_columns, key))
    agg['n_seeds'] = len(members)
    for m in metrics:
      vals = [float(r[m]) for r in members if runs_lib.is_number(r.get(m))]
      if vals:
        agg[f'{m}_mean'], agg[f'{m}_std'] = mean_std(vals)
    out.append(agg)
  return out


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return repr(v)
  return '' if v is None else str(v)


def write_csv(rows: Sequence[dict[str, Any]], path: os.PathLike | str,
              columns: Optional[Sequence[str]] = None,
              front: Sequence[str] = ()) -> pathlib.Path:
  """Writes rows (missing cells empty) with a fixed column order.

  Default order: spec, `n_seeds`, `final_step`, then the `front` columns present
  (e.g. the headline `test_accuracy_mean`/`_std`, `test_ece_mean`/`_std` side by
  side), then the rest sorted.
  """
  path = pathlib.Path(path)
  if columns is None:
    lead = [c for c in (*SPEC_COLUMNS, 'n_seeds', 'final_step', *front)
            if any(c in r for r in rows)]
    lead = list(dict.fromkeys(lead))
    rest = sorted({k for r in rows for k in r} - set(lead))
    columns = lead + rest
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'w', newline='') as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(columns)
    for r in rows:
      w.writerow([_fmt(r.get(c)) for c in columns])
  os.replace(tmp, path)
  return path


def read_csv(path: os.PathLike | str) -> list[dict[str, Any]]:
  """Reads a CSV written by `write_csv`; numeric cells come back as float."""
  out = []
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      parsed = {}
      for k, v in row.items():
        if v == '':
          continue
        try:
          parsed[k] = float(v) if k not in ('dataset', 'size', 'method') else v
        except ValueError:
          parsed[k] = v
      out.append(parsed)
  return out
