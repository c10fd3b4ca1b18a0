"""Run logging: clu metric writers (TensorBoard), `metrics.jsonl`, progress bar.

`MODEL_DIR/metrics.jsonl` gets one JSON object per logged step, e.g.
{"step": 100, "loss": 1.2, "accuracy": 0.6, "learning_rate": 0.01,
 "tokens_per_sec": 5400.0, "eval/sbs_cqa_label_gold/accuracy": 71.3}.
Only process 0 writes. A resumed run first drops the rows beyond its restored
step and a torn last line (`repair_jsonl`, an atomic rewrite), so every step
appears once and no row is glued to a fragment.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np


def _jsonable(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    v = v.item() if np.ndim(v) == 0 else np.asarray(v).tolist()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


def flatten_eval_metrics(metrics: Mapping[str, Any], prefix: str = 'eval') -> dict:
  """{task: {metric: value}} → {'eval/task/metric': value} (scalars only)."""
  out = {}
  for task, mets in metrics.items():
    if isinstance(mets, Mapping):
      for name, value in mets.items():
        value = getattr(value, 'value', value)  # clu / seqio Scalar
        if np.ndim(value) == 0 and isinstance(_jsonable(value), (int, float)):
          out[f'{prefix}/{task}/{name}'] = float(np.asarray(value))
    elif np.ndim(mets) == 0:
      out[f'{prefix}/{task}'] = float(np.asarray(mets))
  return out


def repair_jsonl(path: str, max_step: Optional[int] = None) -> int:
  """Rewrites `path` (atomically) without a torn last line, unparsable lines
  and rows whose step is beyond `max_step`; returns how many were dropped."""
  if not os.path.exists(path):
    return 0
  with open(path, 'rb') as f:
    data = f.read()
  lines = data.split(b'\n')
  torn = lines.pop() if lines else b''  # after the last newline: '' when intact
  keep, dropped = [], int(bool(torn.strip()))
  for line in lines:
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      dropped += 1
      continue
    if max_step is not None and isinstance(row, dict) and int(row.get('step', 0)) > max_step:
      dropped += 1
      continue
    keep.append(line)
  if not dropped and not torn:
    return 0
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(b''.join(l + b'\n' for l in keep))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return dropped


class MetricsLogger:
  """Writes scalars to TensorBoard (clu) and `metrics.jsonl`; drives tqdm."""

  def __init__(self, model_dir: str, total_steps: int, start_step: int = 0,
               progress_bar: Optional[bool] = None, tensorboard: bool = True,
               resume_step: Optional[int] = None):
    """`resume_step`: the step a training run restored (or 0 when it starts
    fresh); rows beyond it are dropped. A torn last line is always repaired."""
    self.model_dir = model_dir
    self.enabled = jax.process_index() == 0
    self.jsonl_path = os.path.join(model_dir, 'metrics.jsonl')
    self._writer = None
    if self.enabled:
      os.makedirs(model_dir, exist_ok=True)
      repair_jsonl(self.jsonl_path, resume_step)
      if tensorboard:
        from clu import metric_writers  # pylint: disable=g-import-not-at-top
        self._writer = metric_writers.create_default_writer(
            os.path.join(model_dir, 'tensorboard'), asynchronous=False)
    if progress_bar is None:
      progress_bar = sys.stderr.isatty()
    self._bar = None
    if self.enabled and progress_bar:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=start_step, unit='step',
                       dynamic_ncols=True, file=sys.stderr)
    self._last_time = time.time()
    self._tokens = 0.0

  def count_tokens(self, n: float) -> None:
    self._tokens += float(n)

  def step_done(self, step: int, postfix: Optional[Mapping[str, float]] = None) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      if postfix:
        self._bar.set_postfix({k: f'{v:.4g}' for k, v in postfix.items()}, refresh=False)

  def throughput(self) -> float:
    """Tokens/s since the last call (resets the counter)."""
    now = time.time()
    rate = self._tokens / max(now - self._last_time, 1e-9)
    self._last_time, self._tokens = now, 0.0
    return rate

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({k: _jsonable(v) for k, v in scalars.items()})
    with open(self.jsonl_path, 'a', encoding='utf-8') as f:
      f.write(json.dumps(record, sort_keys=True) + '\n')
      f.flush()
    if self._writer is not None:
      numeric = {k: v for k, v in record.items()
                 if k != 'step' and isinstance(v, (int, float))}
      self._writer.write_scalars(int(step), numeric)
      self._writer.flush()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._writer is not None:
      self._writer.close()
