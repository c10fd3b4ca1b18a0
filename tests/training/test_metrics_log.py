"""`metrics.jsonl` survives crashes: a resume drops the rows beyond the restored
step and a torn last line, so every step appears once."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import train_helpers as helpers
from distill_sbs.training import metrics_logging

REPO = pathlib.Path(__file__).resolve().parents[2]


def _rows(path):
  return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines() if l]


def test_repair_jsonl_drops_torn_line_and_later_steps(tmp_path):
  p = tmp_path / 'metrics.jsonl'
  p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  assert metrics_logging.repair_jsonl(str(p)) == 1
  assert p.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
  assert metrics_logging.repair_jsonl(str(p), max_step=1) == 1
  assert [r['step'] for r in _rows(p)] == [1]
  assert metrics_logging.repair_jsonl(str(p), max_step=1) == 0
  # Without a resume step (evaluation appending to a run's log) rows are kept.
  p.write_text('{"step": 5}\n')
  metrics_logging.MetricsLogger(str(tmp_path), 0, progress_bar=False,
                                tensorboard=False).close()
  assert [r['step'] for r in _rows(p)] == [5]


def test_resume_leaves_each_step_once(tmp_path):
  (tmp_path / 'model.gin').write_text(helpers.MODEL_GIN)
  (tmp_path / 'run.gin').write_text(helpers.RUN_GIN)
  run = tmp_path / 'run'
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(REPO / 'tests' / 'training'), str(REPO),
                                       env.get('PYTHONPATH', '')])
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('XLA_FLAGS', None)
  cmd = [sys.executable, '-m', 'distill_sbs.train', f'--gin_file={tmp_path / "model.gin"}',
         f'--gin_file={tmp_path / "run.gin"}', f'--gin.MODEL_DIR={run}',
         '--gin.TRAIN_STEPS=6', '--gin.CHECKPOINT_PERIOD=3', '--gin.EVAL_PERIOD=0',
         '--gin.LOG_PERIOD=1', '--gin.KEEP_CHECKPOINTS=None']
  res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  # As if killed after logging step 5 and half of a row, before checkpoint 6.
  shutil.rmtree(run / 'checkpoints' / '6')
  log = run / 'metrics.jsonl'
  log.write_text('\n'.join(log.read_text().splitlines()[:5]) + '\n{"step": 6, "lo')
  res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert [r['step'] for r in _rows(log)] == [1, 2, 3, 4, 5, 6]
