"""Kill-and-resume through the real entry point (`python -m distill_sbs.train`)
equals an uninterrupted run; command-line gin overrides reach config.gin."""
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

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS, PERIOD = 12, 4


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(REPO / 'tests' / 'training'), str(REPO),
                                       env.get('PYTHONPATH', '')])
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  return env


def _cmd(tmp_path, model_dir, *extra):
  (tmp_path / 'model.gin').write_text(helpers.MODEL_GIN)
  (tmp_path / 'run.gin').write_text(helpers.RUN_GIN)
  return [sys.executable, '-m', 'distill_sbs.train',
          f'--gin_file={tmp_path / "model.gin"}', f'--gin_file={tmp_path / "run.gin"}',
          f'--gin.MODEL_DIR={model_dir}', f'--gin.TRAIN_STEPS={STEPS}',
          f'--gin.CHECKPOINT_PERIOD={PERIOD}', '--gin.EVAL_PERIOD=0', '--gin.LOG_PERIOD=4',
          '--gin.KEEP_CHECKPOINTS=None', *extra]


def _final_params(model_dir):
  state = checkpoint_formats.read_orbax_state(os.path.join(model_dir, 'checkpoints', str(STEPS)))
  return traverse_util.flatten_dict(state['params']), state


def test_kill_resume_equals_uninterrupted_and_config_override(tmp_path):
  full, killed = tmp_path / 'full', tmp_path / 'killed'
  env = _env()
  ref = subprocess.Popen(_cmd(tmp_path, full, '--gin.RANDOM_SEED=7'), cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  victim = subprocess.Popen(_cmd(tmp_path, killed, '--gin.RANDOM_SEED=7'), cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = killed / 'checkpoints' / str(PERIOD)
  deadline = time.time() + 240
  while not first.is_dir() and victim.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  assert victim.poll() is None, 'training finished before it could be killed'
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  steps_at_kill = sorted(int(p.name) for p in (killed / 'checkpoints').iterdir()
                         if p.name.isdigit())
  assert steps_at_kill and steps_at_kill[-1] < STEPS
  _, err = ref.communicate(timeout=300)
  assert ref.returncode == 0, err.decode()[-3000:]
  resumed = subprocess.run(_cmd(tmp_path, killed, '--gin.RANDOM_SEED=7'), cwd=REPO, env=env,
                           capture_output=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]

  p_full, s_full = _final_params(full)
  p_res, s_res = _final_params(killed)
  assert int(s_full['step']) == int(s_res['step']) == STEPS
  assert p_full.keys() == p_res.keys()
  for k in p_full:
    np.testing.assert_allclose(p_res[k], p_full[k], atol=1e-6, err_msg='/'.join(k))
  # Training actually moved the parameters and logged every LOG_PERIOD steps.
  logged = [r['step'] for r in _jsonl(full / 'metrics.jsonl')]
  assert logged == list(range(4, STEPS + 1, 4))
  # The command-line override is in the resolved config.
  config = (full / 'config.gin').read_text()
  assert 'RANDOM_SEED = 7' in config and f'TRAIN_STEPS = {STEPS}' in config


def _jsonl(path):
  import json
  return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines() if l]
