"""Non-finite guard: a NaN run stops non-zero naming step and metric, keeps the
last good checkpoint; skipped updates are counted; save and export refuse NaN."""
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

import train_helpers as helpers
from distill_sbs import models
from distill_sbs.models import checkpoint_formats
from distill_sbs.training import checkpoints as ckpt_lib
from distill_sbs.training import optimizers
from distill_sbs.training import partitioning
from distill_sbs.training import train_loop
from distill_sbs.training import trainer as trainer_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _env():
  return helpers.cli_env(keep_xla_flags=True)


def _gins(tmp_path):
  (tmp_path / 'model.gin').write_text(helpers.MODEL_GIN)
  (tmp_path / 'run.gin').write_text(helpers.RUN_GIN)
  return [f'--gin_file={tmp_path / "model.gin"}', f'--gin_file={tmp_path / "run.gin"}']


def test_nan_run_stops_keeps_last_good_checkpoint_and_export_refuses(tmp_path):
  run = tmp_path / 'run'
  res = subprocess.run(
      [sys.executable, '-m', 'distill_sbs.train', *_gins(tmp_path),
       f'--gin.MODEL_DIR={run}', '--gin.TRAIN_STEPS=6', '--gin.CHECKPOINT_PERIOD=1',
       '--gin.EVAL_PERIOD=0', '--gin.LOG_PERIOD=1', '--gin.LEARNING_RATE=1e6'],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert res.returncode != 0
  assert 'non-finite grad_norm at step 2' in res.stderr, res.stderr[-2000:]
  assert 'Traceback' not in res.stderr
  steps = sorted(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [1]
  state = checkpoint_formats.read_orbax_state(str(run / 'checkpoints' / '1'))
  assert all(np.all(np.isfinite(v)) for v in traverse_util.flatten_dict(state['params']).values())
  assert [r['step'] for r in helpers_jsonl(run / 'metrics.jsonl')] == [1]

  # A NaN checkpoint (here a Hugging Face directory) is refused by export.
  params = traverse_util.flatten_dict(state['params'])
  key = next(iter(params))
  params[key] = np.full_like(params[key], np.nan)
  cfg = models.T5Config(vocab_size=384, dtype='float32', emb_dim=32, num_heads=2, head_dim=16,
                        num_encoder_layers=1, num_decoder_layers=1, mlp_dim=64)
  models.save_hf_checkpoint(str(tmp_path / 'nan_hf'), cfg, traverse_util.unflatten_dict(params))
  out = tmp_path / 'export'
  res = subprocess.run(
      [sys.executable, '-m', 'distill_sbs.export', f'--gin_file={tmp_path / "model.gin"}',
       '--gin_file=t5x_configs/runs/export.gin', f'--gin.CHECKPOINT_PATH={tmp_path / "nan_hf"}',
       f'--gin.EXPORT_DIR={out}'], cwd=REPO, env=_env(), capture_output=True, text=True,
      timeout=300)
  assert res.returncode != 0
  assert 'refusing to export' in res.stderr and '/'.join(key) in res.stderr, res.stderr[-2000:]
  assert not (out / 'model.safetensors').exists()


def helpers_jsonl(path):
  import json
  return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines() if l]


def test_skip_nonfinite_updates_counts_and_keeps_params(tmp_path):
  model = helpers.tiny_model(optimizers.adafactor(optimizers.constant(1e6)))
  batches = helpers.synthetic_batches(4)
  state, _ = train_loop.train(
      model=model, train_dataset_cfg=None, model_dir=str(tmp_path), total_steps=4,
      eval_period=0, checkpoint_period=4, log_period=4, async_checkpointing=False,
      progress_bar=False, skip_nonfinite_updates=True, train_batches=batches)
  assert int(state.step) == 4
  assert bool(trainer_lib.all_finite(state.params))
  (row,) = helpers_jsonl(tmp_path / 'metrics.jsonl')
  assert row['nonfinite_skipped'] >= 1 and np.isfinite(row['loss'])


def test_checkpoint_save_refuses_nonfinite(tmp_path):
  mesh = partitioning.create_mesh(partitioning.MeshConfig())
  model = helpers.tiny_model()
  batch = helpers.synthetic_batches(1)[0]
  tr = trainer_lib.Trainer(model, mesh, partitioning.standard_logical_axis_rules(),
                           helpers.input_shapes(batch))
  state = tr.init_state()
  bad = jax.tree.map(lambda x: x * np.nan, state.params)
  ck = ckpt_lib.RunCheckpointer(str(tmp_path), async_save=False)
  with pytest.raises(FloatingPointError, match='refusing to save checkpoint 3'):
    ck.save(3, state.replace(params=bad), {'position': 3}, force=True)
  assert ck.all_steps() == []
  ck.close()
