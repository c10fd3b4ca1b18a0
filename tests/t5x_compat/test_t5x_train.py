"""`python -m t5x.train` on t5x_configs/t5x/sbs_cqa_tiny.gin, end to end (needs T5X).

Trains a few steps on CPU with the paper's CQA data, checks the α-objective
loss falls and a checkpoint is written, then converts it for the project's
reader and checks the parameters arrive unchanged.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

t5x = pytest.importorskip(
    't5x', reason='T5X is not installed (not on the package registry); see docs/t5x.md '
    'to run the T5X adapter tests in an environment with T5X')

REPO = pathlib.Path(__file__).resolve().parents[2]
T5X_ROOT = pathlib.Path(t5x.__file__).resolve().parents[1]


def _train_losses(model_dir):
  """[(step, loss)] of the T5X 'train' summaries."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = []
  for f in sorted((model_dir / 'train').glob('events.out.tfevents.*')):
    for e in tf.compat.v1.train.summary_iterator(str(f)):
      for v in e.summary.value:
        if v.tag == 'loss':
          out.append((e.step, float(tf.make_ndarray(v.tensor))))
  return sorted(out)


def test_t5x_train_sbs_cqa_tiny(tmp_path, raw_dir):
  if not (T5X_ROOT / 't5x' / 'configs' / 'runs' / 'finetune.gin').is_file():
    pytest.skip(f"T5X's run gin files are not under {T5X_ROOT} (install T5X from its "
                'repository, see docs/t5x.md)')
  env = dict(os.environ, DISTILL_SBS_DATA_DIR=str(tmp_path / 'data'),
             CUDA_VISIBLE_DEVICES='', XLA_FLAGS='', JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-m', 'distill_sbs.data.prepare', '--raw_dir',
                  str(raw_dir), '--datasets', 'cqa', '--max_rows', '80'],
                 check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
  model_dir = tmp_path / 'model'
  cmd = [sys.executable, '-m', 't5x.train',
         f'--gin_search_paths={T5X_ROOT},{REPO}',
         '--gin_file=t5x_configs/t5x/sbs_cqa_tiny.gin',
         f"--gin.MODEL_DIR='{model_dir}'",
         '--gin.TRAIN_STEPS=30', '--gin.BATCH_SIZE=8', '--gin.LEARNING_RATE=0.01',
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 192, 'targets': 128}",
         '--gin.EVAL_PERIOD=10', '--gin.utils.SaveCheckpointConfig.period=30',
         '--gin.EVAL_STEPS=1', '--gin.EVALUATOR_NUM_EXAMPLES=4']
  res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
  assert res.returncode == 0, res.stderr[-4000:]
  assert (model_dir / 'checkpoint_30' / 'state').is_dir()
  losses = _train_losses(model_dir)
  assert [s for s, _ in losses] == [10, 20, 30], losses
  assert all(np.isfinite(l) for _, l in losses)
  assert losses[-1][1] < losses[0][1] - 0.3, losses  # the α objective falls
  config = (model_dir / 'config.gin').read_text()
  assert "loss_normalizing_factor = %LOSS_NORMALIZING_FACTOR" in config
  assert "LOSS_NORMALIZING_FACTOR = 'PER_TASK_TOKENS'" in config
  # Into the project's checkpoint layout, parameters unchanged.
  from distill_sbs.t5x_compat import checkpoints as conv  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import checkpoints as project_checkpoints  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  conv.t5x_to_project(str(model_dir), str(tmp_path / 'project_run'))
  ours = project_checkpoints.read_params(str(tmp_path / 'project_run'))
  theirs = project_checkpoints.read_orbax_state(str(model_dir / 'checkpoint_30'))['target']
  fa = jax.tree_util.tree_flatten_with_path(ours)[0]
  fb = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
  assert len(fa) == len(fb) > 40
  for path, value in fa:
    np.testing.assert_array_equal(value, fb[path])
