"""Checkpoint recovery: a damaged latest checkpoint is reported, moved aside and
the run falls back to the previous step; a resume with another model shape
fails before any work, naming the bindings, and keeps config.gin."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

import train_helpers as helpers
from distill_sbs.models import checkpoint_formats
from distill_sbs.training import checkpoints as ckpt_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(tmp_path, run, steps, *extra):
  (tmp_path / 'model.gin').write_text(helpers.MODEL_GIN)
  (tmp_path / 'run.gin').write_text(helpers.RUN_GIN)
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(REPO / 'tests' / 'training'), str(REPO),
                                       env.get('PYTHONPATH', '')])
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('XLA_FLAGS', None)
  return subprocess.run(
      [sys.executable, '-m', 'distill_sbs.train', f'--gin_file={tmp_path / "model.gin"}',
       f'--gin_file={tmp_path / "run.gin"}', f'--gin.MODEL_DIR={run}',
       f'--gin.TRAIN_STEPS={steps}', '--gin.CHECKPOINT_PERIOD=2', '--gin.EVAL_PERIOD=0',
       '--gin.LOG_PERIOD=1', '--gin.KEEP_CHECKPOINTS=None', *extra],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _steps(run):
  return sorted(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())


def test_damaged_checkpoint_falls_back_and_shape_change_fails_early(tmp_path):
  run = tmp_path / 'run'
  res = _run(tmp_path, run, 4)
  assert res.returncode == 0, res.stderr[-3000:]
  assert _steps(run) == [2, 4]

  # Another model shape: fails before any work, listing the binding; config.gin kept.
  recorded = (run / 'config.gin').read_text()
  res = _run(tmp_path, run, 6, '--gin_bindings=models.T5Config.emb_dim = 64')
  assert res.returncode != 0 and 'Traceback' not in res.stderr, res.stderr[-3000:]
  assert "T5Config.emb_dim = 32 in" in res.stderr and 'now 64' in res.stderr
  assert (run / 'config.gin').read_text() == recorded and _steps(run) == [2, 4]

  # The restore itself names the parameter and both shapes.
  state = checkpoint_formats.read_orbax_state(str(run / 'checkpoints' / '4'))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state['params'])
  emb = abstract['token_embedder']['embedding']
  abstract['token_embedder']['embedding'] = jax.ShapeDtypeStruct((384, 64), emb.dtype)
  with pytest.raises(ckpt_lib.ShapeMismatchError,
                     match=r'token_embedder/embedding: \(384, 32\) in the checkpoint, '
                           r'\(384, 64\) in the model'):
    ckpt_lib.compare_shapes(str(run / 'checkpoints' / '4'), abstract)

  # Damage the latest checkpoint: reported, moved aside, the run resumes from 2.
  os.remove(run / 'checkpoints' / '4' / 'state' / '_METADATA')
  res = _run(tmp_path, run, 6)
  assert res.returncode == 0, res.stderr[-3000:]
  err = res.stderr
  assert f'checkpoint step 4 at {run / "checkpoints" / "4"} failed to restore' in err, err[-3000:]
  assert 'falling back to step 2' in err and 'resumed from step 2' in err
  damaged = list((run / 'checkpoints.damaged').iterdir())
  assert len(damaged) == 1 and damaged[0].name.startswith('4-')
  assert _steps(run) == [2, 4, 6]
  rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]
