"""`python -m distill_sbs.export`: checkpoint → Hugging Face directory that
transformers loads with the same logits as our network."""
import os
import subprocess
import sys

import numpy as np
import torch
import transformers

from distill_sbs import models
from distill_sbs.models import checkpoint_formats as checkpoints
from tests.models.helpers import random_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = models.T5Config(vocab_size=384, dtype='float32', emb_dim=64, num_heads=4,
                       num_encoder_layers=2, num_decoder_layers=2, head_dim=16,
                       mlp_dim=128)


def test_export_cli_writes_a_directory_transformers_loads(tmp_path):
  params = random_params(TINY, seed=3)
  ckpt = str(tmp_path / 'checkpoint_7')
  checkpoints.write_t5x_checkpoint(ckpt, params, step=7)
  out = str(tmp_path / 'hf')
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'JAX_PLATFORMS': 'cpu'}
  env.pop('DISTILL_SBS_SPM_PATH', None)
  proc = subprocess.run(
      [sys.executable, '-m', 'distill_sbs.export',
       '--gin_file=t5x_configs/models/t5_1_1/tiny.gin',
       '--gin_file=t5x_configs/runs/export.gin',
       f"--gin.CHECKPOINT_PATH='{ckpt}'", f"--gin.EXPORT_DIR='{out}'"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
  assert proc.returncode == 0, proc.stdout.decode()[-3000:]
  assert 'byte vocabulary' in proc.stdout.decode()
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']

  hf = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  enc = np.array([[5, 9, 200, 17, 1, 0], [33, 44, 1, 0, 0, 0]], np.int32)
  targets = np.array([[12, 99, 7, 1], [3, 1, 0, 0]], np.int32)
  dec_in = np.pad(targets[:, :-1], ((0, 0), (1, 0)))  # shifted right, 0 = start
  ours = models.Transformer(TINY).apply(
      {'params': params}, enc, dec_in, targets, enable_dropout=False)  # [b, l, v]
  with torch.no_grad():  # float64: the exported weights' exact logits
    theirs = hf.double()(input_ids=torch.tensor(enc, dtype=torch.long),
                         attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                         decoder_input_ids=torch.tensor(dec_in, dtype=torch.long)).logits.numpy()
  # Compare at real target positions (HF has no decoder padding mask). These
  # random weights amplify rounding ~40x (residual activations reach ~70, logits
  # ~8): transformers' own float32 forward differs from its float64 one by up to
  # 1.4e-4 (seed 4), so float32 agreement is asserted at 3e-4 (4e-5 relative);
  # a wrong mapping or transpose is off by whole units.
  np.testing.assert_allclose(np.asarray(ours)[0], theirs[0], atol=3e-4)
  np.testing.assert_allclose(np.asarray(ours)[1, :2], theirs[1, :2], atol=3e-4)


def test_export_requires_its_macros(tmp_path):
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(
      [sys.executable, '-m', 'distill_sbs.export',
       '--gin_file=t5x_configs/models/t5_1_1/tiny.gin',
       '--gin_file=t5x_configs/runs/export.gin', f"--gin.EXPORT_DIR='{tmp_path}'"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
  assert proc.returncode != 0
  assert 'CHECKPOINT_PATH' in proc.stdout.decode()
