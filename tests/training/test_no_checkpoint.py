"""`export` / `eval` / `infer` on a run with no checkpoint say so, naming the path."""
import os
import pathlib
import subprocess
import sys

import pytest

import train_helpers as helpers

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('command,run_gin,out_macro', [
    ('export', 'export', 'EXPORT_DIR'),
    ('eval', 'eval', 'EVAL_OUTPUT_DIR'),
    ('infer', 'infer', 'INFER_OUTPUT_DIR'),
])
def test_no_checkpoint_is_named(tmp_path, command, run_gin, out_macro):
  (tmp_path / 'model.gin').write_text(helpers.MODEL_GIN)
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.gin').write_text('')  # a run that never saved a checkpoint
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env['PYTHONPATH'] = os.pathsep.join([str(REPO / 'tests' / 'training'), str(REPO)])
  env.pop('XLA_FLAGS', None)
  extra = [] if command == 'export' else ["--gin.MIXTURE_OR_TASK_NAME='test_cqa_32'"]
  res = subprocess.run(
      [sys.executable, '-m', f'distill_sbs.{command}', f'--gin_file={tmp_path / "model.gin"}',
       f'--gin_file=t5x_configs/runs/{run_gin}.gin', f'--gin.CHECKPOINT_PATH={run}',
       f'--gin.{out_macro}={tmp_path / "out"}', *extra],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode != 0
  assert f'no checkpoint in MODEL_DIR/CHECKPOINT_PATH={run}' in res.stderr, res.stderr[-3000:]
  assert 'INITIAL_CHECKPOINT_PATH' not in res.stderr and 'Traceback' not in res.stderr
