"""FIRST from a Hugging Face decoder-only checkpoint, through the entry points:
`python -m distill_sbs.generate_rationales --backend=local --checkpoint=TEACHER`
writes the top-k records (the teacher: a sharpened copy of the tiny Qwen3
directory of tests/test_decoder_only_hf_workflow.py, with its tokenizer.json),
`python -m distill_sbs.calibrate` fits T, and `python -m distill_sbs.train`
(qwen3 tiny.gin with the directory's shape + gin/runs/cpu.gin +
gin/methods/first.gin + gin/datasets/cqa.gin) trains a student from the same
directory (`INITIAL_CHECKPOINT_PATH`, `HF_TOKENIZER_PATH`) on them. Asserts:
the records carry the tokenizer.json's hash, the loss falls, and the student's
run refuses records of another vocabulary before its first step."""
import json
import os
import subprocess
import sys

import jax
import numpy as np

from distill_sbs import calibrate, models
from distill_sbs.data import schema
from tests.test_decoder_only_hf_workflow import REPO, hf_dir  # noqa: F401  pylint: disable=unused-import


def _run(module, args, env, ok=True):
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
  out = proc.stdout.decode()
  assert (proc.returncode == 0) == ok, out[-4000:]
  return out


def test_first_student_from_an_hf_checkpoint(hf_dir, sbs_data_dir, tmp_path):  # pylint: disable=redefined-outer-name
  import hashlib  # pylint: disable=g-import-not-at-top
  d, cfg, _ = hf_dir
  data = tmp_path / 'data'
  (data / 'first').mkdir(parents=True)
  os.symlink(sbs_data_dir / 'cqa', data / 'cqa')
  records = data / 'first' / 'cqa'
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'JAX_PLATFORMS': 'cpu',
         'DISTILL_SBS_DATA_DIR': str(data)}
  for var in ('DISTILL_SBS_SPM_PATH', 'DISTILL_SBS_HF_TOKENIZER'):
    env.pop(var, None)

  # 1. The teacher writes top-k records (train + validation): the checkpoint
  # with its logits spread (the top-5 holds most of its mass), same tokenizer.
  teacher = tmp_path / 'teacher'
  _, params = models.load_hf_checkpoint(str(d))
  params = jax.tree.map(lambda a: a * 3.0, params)
  params['decoder']['token_embedder']['embedding'] *= 3.0
  models.save_hf_checkpoint(str(teacher), cfg, params)
  (teacher / 'tokenizer.json').write_bytes((d / 'tokenizer.json').read_bytes())
  for split, n in (('train', 16), ('validation', 8)):
    _run('distill_sbs.generate_rationales', [
        '--backend=local', f'--checkpoint={teacher}', '--dataset=cqa', f'--split={split}',
        f'--data_dir={sbs_data_dir}', f'--out_dir={records}', f'--max_examples={n}',
        '--max_tokens=8', '--temperature=1.0', '--seed=0', '--topk=5', '--batch_size=8',
        '--max_input_length=64', '--noprogress'], env)
  recs = list(schema.read_records(str(records / 'train.tfrecord-*')))
  tokenizer_hash = hashlib.sha256((d / 'tokenizer.json').read_bytes()).hexdigest()
  assert len(recs) == 16 and {r['teacher_vocab_hash'] for r in recs} == {tokenizer_hash}
  assert all(r['teacher_target_ids'][-1] == cfg.eos_id for r in recs)
  report = calibrate.main([f'--records={records}', '--split=validation',
                           '--gold_field=llm_output'])
  assert report['temperature'] > 0

  # 2. A student from the same checkpoint trains on them with first.gin.
  args = ['--gin_file=t5x_configs/models/qwen3/tiny.gin',
          f'--gin.models.DecoderOnlyConfig.vocab_size={cfg.vocab_size}',
          f'--gin.models.DecoderOnlyConfig.eos_ids=({cfg.eos_id},)',
          f'--gin.models.DecoderOnlyConfig.pad_id={cfg.pad_id}',
          f'--gin.models.DecoderOnlyConfig.bos_id={cfg.bos_id}',
          f"--gin.HF_TOKENIZER_PATH='{d}'", f"--gin.INITIAL_CHECKPOINT_PATH='{d}'",
          '--gin_file=gin/runs/cpu.gin', '--gin_file=gin/methods/first.gin',
          '--gin_file=gin/datasets/cqa.gin', '--gin.TRAIN_STEPS=12', '--gin.BATCH_SIZE=8',
          '--gin.LOG_PERIOD=1', '--gin.EVAL_PERIOD=0', '--gin.CHECKPOINT_PERIOD=12',
          '--gin.LEARNING_RATE=0.1', '--gin.INPUTS_LENGTH=32', '--gin.LABEL_LENGTH=16',
          '--gin.ALLOW_TRUNCATION=True']
  run_dir = tmp_path / 'run'
  out = _run('distill_sbs.train', [*args, f"--gin.MODEL_DIR='{run_dir}'"], env)
  assert f'initialised parameters from {d}' in out, out[-3000:]
  rows = [json.loads(l) for l in (run_dir / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in rows if 'kl' in r]
  assert [r['step'] for r in train] == list(range(1, 13))
  loss = [r['loss'] for r in train]
  assert np.mean(loss[-3:]) < np.mean(loss[:3]) - 0.3, loss

  # 3. The same run on a byte-vocabulary student: refused before the first step.
  out = _run('distill_sbs.train', [*args, "--gin.HF_TOKENIZER_PATH=None",
                                   f"--gin.MODEL_DIR='{tmp_path / 'bytes'}'"], env, ok=False)
  assert 'teacher_vocab_hash' in out and tokenizer_hash in out, out[-3000:]
