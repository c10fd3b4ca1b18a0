"""SIGTERM mid-run: the step finishes, a checkpoint is saved, exit 75; the rerun
equals an uninterrupted run bit for bit (parameters and logged metrics)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
from flax import traverse_util

import train_helpers as helpers
from distill_sbs.models import checkpoint_formats
from distill_sbs.training import preemption

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 16


def _env():
  return helpers.cli_env()


def _cmd(tmp_path, model_dir):
  (tmp_path / 'model.gin').write_text(helpers.MODEL_GIN)
  (tmp_path / 'run.gin').write_text(helpers.RUN_GIN)
  return [sys.executable, '-m', 'distill_sbs.train', f'--gin_file={tmp_path / "model.gin"}',
          f'--gin_file={tmp_path / "run.gin"}', f'--gin.MODEL_DIR={model_dir}',
          "--gin.MIXTURE_OR_TASK_NAME='test_cqa_32_slow'", f'--gin.TRAIN_STEPS={STEPS}',
          '--gin.CHECKPOINT_PERIOD=100', '--gin.EVAL_PERIOD=0', '--gin.LOG_PERIOD=1',
          '--gin.KEEP_CHECKPOINTS=None', '--gin.RANDOM_SEED=3']


def _rows(model_dir):
  rows = [json.loads(l) for l in (model_dir / 'metrics.jsonl').read_text().splitlines() if l]
  for r in rows:
    r.pop('tokens_per_sec')
  return rows


def _params(model_dir):
  state = checkpoint_formats.read_orbax_state(str(model_dir / 'checkpoints' / str(STEPS)))
  return traverse_util.flatten_dict(state['params']), state


def test_sigterm_saves_exits_75_and_resume_equals_uninterrupted(tmp_path):
  full, victim_dir = tmp_path / 'full', tmp_path / 'victim'
  env = _env()
  ref = subprocess.Popen(_cmd(tmp_path, full), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
  victim = subprocess.Popen(_cmd(tmp_path, victim_dir), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  log = victim_dir / 'metrics.jsonl'
  deadline = time.time() + 240
  while victim.poll() is None and time.time() < deadline:
    if log.exists() and len(log.read_text().splitlines()) >= 2:
      break
    time.sleep(0.005)
  assert victim.poll() is None, 'training finished before the signal'
  victim.send_signal(signal.SIGTERM)
  _, err = victim.communicate(timeout=240)
  assert victim.returncode == preemption.EXIT_PREEMPTED, err[-3000:]
  saved = sorted(int(p.name) for p in (victim_dir / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert len(saved) == 1 and 2 <= saved[0] < STEPS, saved
  assert f'preempted: saved checkpoint {saved[0]}' in err
  assert [r['step'] for r in _rows(victim_dir)] == list(range(1, saved[0] + 1))

  resumed = subprocess.run(_cmd(tmp_path, victim_dir), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'resumed from step {saved[0]}' in resumed.stderr
  _, ref_err = ref.communicate(timeout=300)
  assert ref.returncode == 0, ref_err[-3000:]

  p_full, s_full = _params(full)
  p_res, s_res = _params(victim_dir)
  assert int(s_full['step']) == int(s_res['step']) == STEPS
  assert p_full.keys() == p_res.keys()
  for k in p_full:
    np.testing.assert_array_equal(p_res[k], p_full[k], err_msg='/'.join(k))
  for k, v in traverse_util.flatten_dict(s_full['opt_state']).items() if isinstance(
      s_full['opt_state'], dict) else []:
    np.testing.assert_array_equal(traverse_util.flatten_dict(s_res['opt_state'])[k], v)
  assert _rows(victim_dir) == _rows(full)


def test_second_signal_aborts_at_once():
  code = ('import os, signal, time\n'
          'from distill_sbs.training import preemption\n'
          'with preemption.PreemptionGuard() as g:\n'
          '  os.kill(os.getpid(), signal.SIGTERM)\n'
          '  assert g.reached(1)\n'
          '  os.kill(os.getpid(), signal.SIGTERM)\n'
          '  time.sleep(30)\n')
  res = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=60)
  assert res.returncode == -signal.SIGTERM, res.stderr[-2000:]
  assert 'send it again to abort now' in res.stderr
