"""A sweep's execution: each planned run as a subprocess, resumable.

Runs every planned run whose done marker does not match (`runs.is_done`), the
training then the test evaluation, each logged to the run dir, with a progress
line now and then; writes the done marker after both succeed.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import time
from typing import Callable, Mapping, Optional, Protocol, Sequence

from distill_sbs.experiments import runs as runs_lib
from distill_sbs.experiments import sweep_plan

REPO_ROOT = sweep_plan.REPO_ROOT


class Runner(Protocol):
  """Runs one argv with its output logged to `log_path`; raises on failure.

  `progress()` (optional) returns a one-line status to show now and then;
  `env` (optional) holds variables added to the run's environment.
  """

  def __call__(self, argv: Sequence[str], log_path: pathlib.Path,
               progress: Optional[Callable[[], Optional[str]]] = None,
               env: Optional[Mapping[str, str]] = None) -> None:
    ...


_NOISE = re.compile(r'^([IWEF]\d{4} |WARNING: All log messages|\$ )')


def _last_line(path: pathlib.Path) -> Optional[str]:
  """The log's last line that is not absl/TF logging noise."""
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
      lines = [l for l in f.read().decode('utf-8', 'replace').splitlines()
               if l.strip() and not _NOISE.match(l)]
    return lines[-1] if lines else None
  except OSError:
    return None


def subprocess_runner(argv: Sequence[str], log_path: pathlib.Path,
                      progress: Optional[Callable[[], Optional[str]]] = None,
                      env: Optional[Mapping[str, str]] = None,
                      echo: Callable[[str], None] = lambda s: print(s, flush=True),
                      echo_every: float = 15.0) -> None:
  """Runs argv with output to `log_path`; every `echo_every` s echoes
  `progress()` (default: the log's last line) with the elapsed time."""
  log_path.parent.mkdir(parents=True, exist_ok=True)
  env = {**os.environ, **(env or {})}
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  t0 = time.monotonic()
  with open(log_path, 'a') as log:
    log.write('$ ' + ' '.join(argv) + '\n')
    log.flush()
    proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=str(REPO_ROOT))
    try:
      while True:
        try:
          rc = proc.wait(timeout=echo_every)
          break
        except subprocess.TimeoutExpired:
          msg = progress() if progress else _last_line(log_path)
          if msg:
            echo(f'    {msg[:160]} [{time.monotonic() - t0:.0f}s]')
    except BaseException:
      proc.kill()
      proc.wait()
      raise
  if rc != 0:
    tail = ''.join(log_path.read_text().splitlines(keepends=True)[-20:])
    raise RuntimeError(f'command failed (exit {rc}), log {log_path}:\n{tail}')


def train_progress(model_dir: pathlib.Path, total_steps: int
                   ) -> Callable[[], Optional[str]]:
  """'step 300/1500 (20%) loss 2.31, ETA 4m10s' from the run's metrics.jsonl."""
  path = pathlib.Path(model_dir) / runs_lib.METRICS_FILE
  first: dict[str, float] = {}

  def status() -> Optional[str]:
    line = _last_line(path)
    if not line:
      return 'starting (imports, input pipeline, compilation)'
    try:
      rec = json.loads(line)
      step = int(rec['step'])
    except (ValueError, KeyError, TypeError):
      return None
    now = time.monotonic()
    first.setdefault('step', step)
    first.setdefault('time', now)
    msg = f'step {step}/{total_steps} ({100 * step // max(total_steps, 1)}%)'
    if runs_lib.is_number(rec.get('loss')):
      msg += f' loss {rec["loss"]:.3f}'
    done, spent = step - first['step'], now - first['time']
    if done > 0 and spent > 0:
      eta = (total_steps - step) * spent / done
      msg += f', ETA {int(eta // 60)}m{int(eta % 60):02d}s'
    return msg
  return status


def execute(config: sweep_plan.SweepConfig, runner: Runner = subprocess_runner,
            log: Callable[[str], None] = lambda s: print(s, flush=True)
            ) -> dict[str, list[runs_lib.RunSpec]]:
  """Runs every unfinished run; returns {'ran': [...], 'skipped': [...], 'failed': [...]}."""
  planned = sweep_plan.plan(config)
  status: dict[str, list[runs_lib.RunSpec]] = {'ran': [], 'skipped': [], 'failed': []}
  t0 = time.monotonic()
  for i, run in enumerate(planned, 1):
    head = f'[{i}/{len(planned)}] {run.spec.run_id}'
    if runs_lib.is_done(run.model_dir, run.spec, run.signature):
      log(f'{head}: finished earlier, skipped')
      status['skipped'].append(run.spec)
      continue
    log(f'{head}: training ({time.monotonic() - t0:.0f}s elapsed)')
    seconds = {}
    try:
      t = time.monotonic()
      runner(run.train_argv, run.model_dir / 'train.log',
             progress=train_progress(run.model_dir, run.train_steps), env=config.env)
      seconds['train_seconds'] = round(time.monotonic() - t, 1)
      if run.eval_argv:
        log(f'{head}: evaluating on the test split')
        t = time.monotonic()
        runner(run.eval_argv, run.model_dir / 'eval.log', env=config.env)
        seconds['eval_seconds'] = round(time.monotonic() - t, 1)
    except Exception as e:  # pylint: disable=broad-except
      status['failed'].append(run.spec)
      if not config.keep_going:
        raise
      log(f'{head}: FAILED ({e}); continuing (keep_going)')
      continue
    runs_lib.mark_done(run.model_dir, run.spec,
                       {'signature': run.signature, 'argv': list(run.train_argv[1:]),
                        'wall': seconds})
    status['ran'].append(run.spec)
  return status
