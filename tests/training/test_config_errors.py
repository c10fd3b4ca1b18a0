"""Configuration mistakes fail before the first step, each naming its cause
(through the real `python -m distill_sbs.train`)."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util

import train_helpers as helpers
from distill_sbs import models
from distill_sbs.training import config_checks

REPO = pathlib.Path(__file__).resolve().parents[2]


def _env():
  return helpers.cli_env()


def _train(tmp_path, *args, gins=None):
  if gins is None:
    (tmp_path / 'model.gin').write_text(helpers.MODEL_GIN)
    (tmp_path / 'run.gin').write_text(helpers.RUN_GIN)
    gins = [tmp_path / 'model.gin', tmp_path / 'run.gin']
  run = tmp_path / 'run'
  res = subprocess.run(
      [sys.executable, '-m', 'distill_sbs.train', *(f'--gin_file={g}' for g in gins),
       f'--gin.MODEL_DIR={run}', '--gin.TRAIN_STEPS=2', '--gin.EVAL_PERIOD=0', *args],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert res.returncode != 0
  assert 'Traceback' not in res.stderr, res.stderr[-3000:]
  # Nothing trained: no checkpoint, no metrics row.
  assert not (run / 'checkpoints').exists() and not (run / 'metrics.jsonl').exists()
  return res.stderr


def test_misspelt_macro_names_the_closest(tmp_path):
  err = _train(tmp_path, '--gin.TRAIN_STEP=5')
  assert 'gin macro TRAIN_STEP' in err and 'did you mean TRAIN_STEPS?' in err


def test_wrong_type_names_the_macro(tmp_path):
  err = _train(tmp_path, "--gin.BATCH_SIZE='abc'")
  assert "gin macro BATCH_SIZE = 'abc' is a str, but BATCH_SIZE must be a number" in err


def test_paired_task_needs_even_batch(tmp_path):
  err = _train(tmp_path, '--gin.BATCH_SIZE=3',
               '--gin_bindings=train/input_pipeline.DatasetConfig.pack = False',
               gins=['gin/sbs/cqa_tiny.gin'])
  assert "BATCH_SIZE=3 gives 3 rows per host; the paired task 'sbs_cqa_paired_llm'" in err


def test_length_check_targets_and_prefix(tmp_path):
  err = _train(tmp_path, "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 8}")
  assert 'targets longer than 8 tokens (they would lose their end and EOS)' in err
  assert 'ALLOW_TRUNCATION' in err
  err = _train(tmp_path, "--gin.MIXTURE_OR_TASK_NAME='test_cqa_32_predict'",
               "--gin.TASK_FEATURE_LENGTHS={'inputs': 6, 'targets': 24}")
  assert 'inputs longer than 6 tokens and the length cuts their 9-token task prefix' in err


def test_length_check_counts_and_allow_truncation():
  import tiny_tasks  # pylint: disable=unused-import,import-outside-toplevel
  lines = []
  reps = config_checks.check_lengths('test_cqa_32', {'inputs': 128, 'targets': 8},
                                     allow_truncation=True, report=lines.append)
  rep = reps['test_cqa_32']
  assert rep['targets']['examples'] == 32 and rep['targets']['truncated'] > 0
  assert rep['inputs']['truncated'] > 0 and any('allow_truncation' in l for l in lines)


def test_hf_config_mismatch_lists_fields(tmp_path):
  cfg = models.T5Config(vocab_size=384, dtype='float32', emb_dim=32, num_heads=2, head_dim=16,
                        num_encoder_layers=2, num_decoder_layers=2, mlp_dim=64,
                        mlp_activations=('silu', 'linear'))
  model = models.Transformer(cfg)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  x = jnp.ones((1, 4), jnp.int32)
  params = nn.meta.unbox(jax.jit(lambda r: model.init(r, x, x, x, enable_dropout=False))(
      jax.random.PRNGKey(0))['params'])
  hf = tmp_path / 'hf'
  models.save_hf_checkpoint(str(hf), cfg, jax.tree.map(np.asarray, params))
  err = _train(tmp_path, f'--gin.INITIAL_CHECKPOINT_PATH={hf}')
  for field in ('num_encoder_layers: 2 in config.json, 1 in the model gin',
                'num_decoder_layers: 2', "mlp_activations: ('silu', 'linear')"):
    assert field in err, err[-2000:]


def test_defined_but_unused_macro_passes(tmp_path):
  import gin  # pylint: disable=import-outside-toplevel
  f = tmp_path / 'x.gin'
  f.write_text('A = 1\nB = %A\nUNUSED = 2\n')
  with helpers.fresh_gin():
    gin.parse_config_files_and_bindings([str(f)], ['UNUSED = 3', 'A = 4'],
                                        finalize_config=False)
    config_checks.check_macro_bindings(['UNUSED = 3', 'A = 4'], [str(f)])  # a sweep's lengths
    gin.parse_config_files_and_bindings([], ['B2 = 5'], finalize_config=False)
    with pytest.raises(config_checks.ConfigError, match='gin macro B2 .*did you mean B'):
      config_checks.check_macro_bindings(['B2 = 5'], [str(f)])


def test_known_macro_with_wrong_type_in_a_file(tmp_path):
  import gin  # pylint: disable=import-outside-toplevel
  f = tmp_path / 'x.gin'
  f.write_text("BATCH_SIZE = '16'\nX = %BATCH_SIZE\n")
  with helpers.fresh_gin():
    gin.parse_config_files_and_bindings([str(f)], [], finalize_config=False)
    with pytest.raises(config_checks.ConfigError,
                       match=r"gin macro BATCH_SIZE = '16' \(set in the gin files\) is a str"):
      config_checks.check_macro_bindings([], [str(f)])
