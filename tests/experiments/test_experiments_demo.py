"""A shortened demo end to end: real data, real trainer and evaluator subprocesses."""
import csv
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from flax import traverse_util

from distill_sbs.experiments import demo
from distill_sbs.experiments import runs as runs_lib

PNG = b'\x89PNG\r\n\x1a\n'


def test_short_demo_writes_every_report_file(tmp_path, raw_dir, monkeypatch):
  monkeypatch.setenv('DISTILL_SBS_RAW_DIR', str(raw_dir))
  before = {k: os.environ.get(k) for k in ('DISTILL_SBS_DATA_DIR', 'DISTILL_SBS_SPM_PATH')}
  cfg = demo.DemoConfig(dataset='esnli', train_steps=4, batch_size=8, input_length=48,
                        target_length=24, label_length=4, vocab_size=400,
                        max_train_examples=150, max_test_examples=16,
                        work_dir=str(tmp_path / 'work'), report_dir=str(tmp_path / 'report'))
  lines = []
  path = demo.run_demo(cfg, log=lines.append)
  out = tmp_path / 'report'
  assert path == out / 'report.md'
  for name in ('training_curves.png', 'accuracy_by_method.png', 'reliability.png'):
    assert (out / name).read_bytes()[:8] == PNG, name
  text = path.read_text()
  for m in cfg.methods:
    assert f'| {m} |' in text
  assert 'ECE' in text and '![reliability diagrams](reliability.png)' in text
  # Progress for every stage, and the table printed at the end.
  joined = '\n'.join(lines)
  for stage in ('[1/5] data', '[2/5] vocabulary', '[3/5] train + evaluate',
                '[4/5] train + evaluate', '[5/5] report'):
    assert stage in joined
  assert 'standard_finetune' in lines[-1] and 'accuracy %' in lines[-1]
  assert {k: os.environ.get(k) for k in before} == before  # environment restored

  with open(out / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['method'] for r in rows] == ['sbs_gold', 'standard_finetune']  # one per run
  for r in rows:
    run_dir = tmp_path / 'work/sweep/runs/esnli_tiny' / r['method'] / 'frac100/seed0'
    records = runs_lib.read_metrics(run_dir / 'metrics.jsonl')
    assert max(rec['step'] for rec in records) == 4 == int(r['final_step'])
    for key, value in runs_lib.last_values(records).items():  # every metrics.jsonl key
      if key != 'step':
        assert float(r[key]) == value, key
    results = json.loads((run_dir / 'eval_results.json').read_text())
    assert float(r['test_accuracy']) == results['accuracy']
    assert 0.0 <= float(r['test_ece']) <= 1.0 and float(r['test_num_examples']) == 16
    assert float(r['train_seconds']) > 0
    n_pred = len((run_dir / 'test_predictions.jsonl').read_text().splitlines())
    assert n_pred == 16
    # Same examples per step: the paired method's batch holds 2 rows per example.
    config_gin = (run_dir / 'config.gin').read_text()
    assert f"BATCH_SIZE = {16 if r['method'] == 'sbs_gold' else 8}" in config_gin
    assert "INPUTS_LENGTH = 48" in config_gin
  # A rerun reuses both finished runs (no training) and rewrites the same CSV.
  first_csv = (out / 'results.csv').read_bytes()
  lines.clear()
  demo.run_demo(cfg, log=lines.append)
  assert sum('finished earlier, skipped' in l for l in lines) == 2
  assert (out / 'results.csv').read_bytes() == first_csv


def _hf_student(path, raw_dir):
  """A tiny Hugging Face T5 directory (config.json, model.safetensors, spiece.model)."""
  import jax
  import jax.numpy as jnp
  from distill_sbs import models
  from distill_sbs.experiments import spm
  from flax.core import meta
  lines = (raw_dir / 'esnli/esnli_valid.json').read_text().splitlines()[:300]
  rows = [json.loads(l) for l in lines]
  model = spm.train_spm([r['premise'] + ' ' + r['hypothesis'] for r in rows],
                        path.parent / 'student_spm', 400)
  # A shape unlike gin/experiments/demo.gin's (which would not load it), and a
  # config vocab_size above the 500 ids of the SentencePiece model (HF pads it).
  config = models.T5Config(vocab_size=512, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
                           num_encoder_layers=1, num_decoder_layers=2,
                           relative_attention_num_buckets=8, relative_attention_max_distance=20)
  x = jnp.ones((1, 4), jnp.int32)
  params = meta.unbox(models.Transformer(config).init(
      jax.random.PRNGKey(1), x, x, x, enable_dropout=False)['params'])
  models.save_hf_checkpoint(path, config, params)
  shutil.copy(model, path / 'spiece.model')
  return params


def test_demo_from_a_pretrained_student(tmp_path, raw_dir, monkeypatch):
  """Both methods start from the checkpoint, with its shape and vocabulary."""
  from distill_sbs.models import checkpoint_formats as checkpoints
  monkeypatch.setenv('DISTILL_SBS_RAW_DIR', str(raw_dir))
  hf = tmp_path / 'flan'
  hf.mkdir()
  params = _hf_student(hf, raw_dir)
  cfg = demo.DemoConfig(dataset='esnli', train_steps=2, batch_size=8, input_length=48,
                        target_length=24, label_length=4, max_train_examples=60,
                        max_test_examples=8, learning_rate=0.0, pretrained=str(hf),
                        work_dir=str(tmp_path / 'work'), report_dir=str(tmp_path / 'report'))
  lines = []
  path = demo.run_demo(cfg, log=lines.append)
  joined = '\n'.join(lines)
  assert '[2/5] student' in joined and '1+2 layers, emb 32' in joined
  assert not (tmp_path / 'work/vocab').exists()  # no vocabulary trained
  assert f'pretrained checkpoint `{hf}`' in path.read_text()
  gin_text = (tmp_path / 'work/pretrained_student.gin').read_text()
  assert 'VOCAB_SIZE = 512' in gin_text and 'num_decoder_layers = 2' in gin_text
  want = traverse_util.flatten_dict(params)
  for method in cfg.methods:
    run_dir = tmp_path / 'work/sweep/runs/esnli_pretrained' / method / 'frac100/seed0'
    operative = (run_dir / 'config.gin').read_text()
    assert 'INITIAL_CHECKPOINT_PATH = ' in operative and f"'{hf}'" in operative
    # Learning rate 0: the trained weights are exactly the checkpoint's.
    got = traverse_util.flatten_dict(checkpoints.read_params(str(run_dir)))
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=str(k))
    assert len((run_dir / 'test_predictions.jsonl').read_text().splitlines()) == 8

  (hf / 'spiece.model').unlink()
  with pytest.raises(FileNotFoundError, match='no spiece.model'):
    demo.run_demo(dataclasses.replace(cfg, work_dir=str(tmp_path / 'work2')), log=lines.append)
  assert not (tmp_path / 'work2').exists()  # it failed before preparing any data
