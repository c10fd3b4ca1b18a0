"""A user's workflow with a Hugging Face decoder-only checkpoint, through the
entry points: a tiny random Qwen3 directory (`models.save_hf_checkpoint` +
a byte-level BPE `tokenizer.json` trained here, config.json with its eos / pad /
bos ids) → `python -m distill_sbs.train` (qwen3 tiny.gin with the directory's
shape and ids + gin/runs/cpu.gin + gin/methods/sbs_llm.gin +
gin/datasets/cqa.gin, `INITIAL_CHECKPOINT_PATH` = the directory,
`HF_TOKENIZER_PATH` = the directory) → `python -m distill_sbs.eval` (accuracy
and ECE) → `python -m distill_sbs.export` → `transformers` loads the export
with our logits (the real-size gins, t5x_configs/models/qwen3/0_6b.gin etc.,
read the tokenizer from INITIAL_CHECKPOINT_PATH by themselves).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from distill_sbs import models
from distill_sbs.data import schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ['<|endoftext|>', '<|im_start|>', '<pad>']


def _tokenizer(texts):
  """Byte-level BPE; the specials get the last ids (id 0 is a byte token)."""
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top,g-multiple-import
  tok = Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=500, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  tok.add_special_tokens(SPECIALS)
  return tok


@pytest.fixture(scope='module')
def hf_dir(sbs_data_dir, tmp_path_factory):
  recs = schema.read_records(str(sbs_data_dir / 'cqa' / 'train.tfrecord-*'))
  texts = [t for r in recs for t in (r['inputs'], r.get('rationale', ''), r['label']) if t]
  tok = _tokenizer(texts)
  eos, bos, pad = (tok.token_to_id(t) for t in SPECIALS)
  cfg = models.DecoderOnlyConfig(  # qwen3/tiny.gin's network, this vocabulary
      model_type='qwen3', vocab_size=512, emb_dim=64, num_heads=4, num_kv_heads=2,
      num_layers=2, head_dim=16, mlp_dim=128, qk_norm=True, rope_theta=1e6,
      logits_via_embedding=True, max_position_embeddings=2048, eos_ids=(eos,), pad_id=pad,
      bos_id=bos)
  assert tok.get_vocab_size() <= cfg.vocab_size
  x = jnp.ones((1, 8), jnp.int32)
  params = meta.unbox(models.DecoderOnlyTransformer(cfg).init(
      jax.random.PRNGKey(0), x, enable_dropout=False)['params'])
  d = tmp_path_factory.mktemp('hf') / 'tiny-qwen3'
  models.save_hf_checkpoint(str(d), cfg, params)
  tok.save(str(d / 'tokenizer.json'))
  return d, cfg, tok


def _run(module, args, env):
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
  out = proc.stdout.decode()
  assert proc.returncode == 0, out[-4000:]
  return out


def test_hf_checkpoint_trains_evaluates_exports(hf_dir, sbs_data_dir, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from distill_sbs.models import checkpoint_formats  # pylint: disable=g-import-not-at-top
  d, cfg, tok = hf_dir
  config_json = json.loads((d / 'config.json').read_text())
  assert (config_json['eos_token_id'], config_json['pad_token_id'],
          config_json['bos_token_id']) == (cfg.eos_id, cfg.pad_id, cfg.bos_id)
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'JAX_PLATFORMS': 'cpu',
         'DISTILL_SBS_DATA_DIR': str(sbs_data_dir)}
  for var in ('DISTILL_SBS_SPM_PATH', 'DISTILL_SBS_HF_TOKENIZER'):
    env.pop(var, None)
  # The model gin: qwen3 tiny with the directory's vocabulary size and ids.
  model = ['--gin_file=t5x_configs/models/qwen3/tiny.gin',
           f'--gin.models.DecoderOnlyConfig.vocab_size={cfg.vocab_size}',
           f'--gin.models.DecoderOnlyConfig.eos_ids=({cfg.eos_id},)',
           f'--gin.models.DecoderOnlyConfig.pad_id={cfg.pad_id}',
           f'--gin.models.DecoderOnlyConfig.bos_id={cfg.bos_id}',
           f"--gin.HF_TOKENIZER_PATH='{d}'", '--gin.MAX_DECODE_LENGTH=8']
  run_dir = tmp_path / 'run'

  # 1. Train step-by-step from the checkpoint.
  out = _run('distill_sbs.train', [
      *model, '--gin_file=gin/runs/cpu.gin', '--gin_file=gin/methods/sbs_llm.gin',
      '--gin_file=gin/datasets/cqa.gin', f"--gin.MODEL_DIR='{run_dir}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{d}'", '--gin.TRAIN_STEPS=8', '--gin.BATCH_SIZE=8',
      '--gin.LOG_PERIOD=1', '--gin.EVAL_PERIOD=0', '--gin.CHECKPOINT_PERIOD=8',
      '--gin.LEARNING_RATE=0.03', '--gin.INPUTS_LENGTH=64', '--gin.LABEL_LENGTH=16',
      '--gin.RATIONALE_LENGTH=48', '--gin.ALLOW_TRUNCATION=True'], env)
  assert f'initialised parameters from {d}' in out, out[-3000:]
  rows = [json.loads(l) for l in (run_dir / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in rows if 'loss' in r]
  assert [r['step'] for r in train] == list(range(1, 9))
  assert np.mean([r['loss'] for r in train[-2:]]) < np.mean([r['loss'] for r in train[:2]])
  assert 'label_loss' in train[0] and 'rationale_loss' in train[0]
  # The vocabulary (model and tasks) was the directory's tokenizer.json.
  operative = (run_dir / 'config.operative.gin').read_text()
  assert f"HF_TOKENIZER_PATH = '{d}'" in operative
  assert 'get_vocabulary.hf_tokenizer_path = %HF_TOKENIZER_PATH' in operative

  # 2. Evaluate: generation accuracy and rank-classification accuracy / ECE.
  eval_dir = tmp_path / 'eval'
  _run('distill_sbs.eval', [
      *model, '--gin_file=t5x_configs/runs/eval.gin',
      "--gin.MIXTURE_OR_TASK_NAME='eval_cqa_predict'", f"--gin.CHECKPOINT_PATH='{run_dir}'",
      f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'", '--gin.EVAL_NUM_EXAMPLES=10',
      '--gin.BATCH_SIZE=8'], env)
  (metrics,) = [json.loads(l) for l in (eval_dir / 'metrics.jsonl').read_text().splitlines()]
  assert metrics['step'] == 8
  acc = {k: v for k, v in metrics.items() if k.endswith('accuracy')}
  ece = {k: v for k, v in metrics.items() if k.lower().endswith('/ece')}
  assert len(acc) >= 2 and all(0 <= v <= 100 for v in acc.values()), metrics
  assert ece and all(np.isfinite(v) for v in ece.values()), metrics

  # 3. Export to a Hugging Face directory; transformers loads it.
  export_dir = tmp_path / 'export'
  out = _run('distill_sbs.export', [
      *model, '--gin_file=t5x_configs/runs/export.gin', f"--gin.CHECKPOINT_PATH='{run_dir}'",
      f"--gin.EXPORT_DIR='{export_dir}'"], env)
  assert 'tokenizer.json' in out
  assert {'config.json', 'model.safetensors', 'tokenizer.json'} <= set(os.listdir(export_dir))
  assert (export_dir / 'tokenizer.json').read_bytes() == (d / 'tokenizer.json').read_bytes()
  exported = json.loads((export_dir / 'config.json').read_text())
  assert (exported['model_type'], exported['eos_token_id'], exported['pad_token_id']) == (
      'qwen3', cfg.eos_id, cfg.pad_id)

  hf = transformers.AutoModelForCausalLM.from_pretrained(
      str(export_dir), torch_dtype=torch.float32).eval()
  assert type(hf).__name__ == 'Qwen3ForCausalLM'
  ids = [tok.encode(t).ids[:12] for t in ('Q: Where would you put a cup of coffee?',
                                          'The answer is (b) kitchen because it is warm.')]
  assert all(len(i) == 12 for i in ids)
  batch = np.asarray(ids, np.int32)
  params = checkpoint_formats.read_params(str(run_dir))
  ours = np.asarray(models.DecoderOnlyTransformer(cfg).apply(
      {'params': params}, batch, enable_dropout=False))
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(batch, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
  # Trained: the export is not the initial checkpoint.
  init = models.load_hf_checkpoint(str(d))[1]
  assert not np.allclose(np.asarray(models.DecoderOnlyTransformer(cfg).apply(
      {'params': init}, batch, enable_dropout=False)), ours, atol=1e-4)


@pytest.mark.parametrize('model_gin', ['qwen3/0_6b', 'llama/3_2_1b', 'gemma3/270m'])
def test_real_size_gins_read_the_tokenizer_of_the_checkpoint(hf_dir, tmp_path, monkeypatch,
                                                             model_gin):
  """Training: INITIAL_CHECKPOINT_PATH alone selects the vocabulary (model and
  tasks); evaluation / export: HF_TOKENIZER_PATH; neither: bytes."""
  import gin  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from distill_sbs.data import hf_vocab  # pylint: disable=g-import-not-at-top
  from distill_sbs.data import vocab  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import gin_utils  # pylint: disable=g-import-not-at-top
  d = hf_dir[0]
  for var in ('DISTILL_SBS_SPM_PATH', 'DISTILL_SBS_HF_TOKENIZER'):
    monkeypatch.delenv(var, raising=False)
  model = f't5x_configs/models/{model_gin}.gin'
  train = [model, 'gin/runs/cpu.gin', 'gin/methods/sbs_llm.gin', 'gin/datasets/cqa.gin']
  for files, bindings, want in (
      (train, [f"INITIAL_CHECKPOINT_PATH = '{d}'"], d),
      ([model, 't5x_configs/runs/eval.gin'], [f"HF_TOKENIZER_PATH = '{d}'"], d),
      ([model, 't5x_configs/runs/export.gin'], [f"HF_TOKENIZER_PATH = '{d}'"], d),
      (train, [], None)):
    gin.clear_config()
    vocab.reset_default_vocabulary()
    try:
      gin_utils.parse_gin(files, [f"MODEL_DIR = '{tmp_path}'", *bindings], check_required=False)
      v = gin.query_parameter('%VOCABULARY').scoped_configurable_fn()
      tasks_vocab = vocab.DEFAULT_VOCABULARY.resolved
    finally:
      gin.clear_config()
      vocab.reset_default_vocabulary()
    if want is None:
      assert isinstance(v, seqio.ByteVocabulary)
    else:
      assert isinstance(v, hf_vocab.HfTokenizerVocabulary) and v.path == str(want)
      assert tasks_vocab == v
  # Started from a run directory (no tokenizer.json): the error names the macro.
  gin.clear_config()
  try:
    gin_utils.parse_gin(train, [f"MODEL_DIR = '{tmp_path}'",
                                f"INITIAL_CHECKPOINT_PATH = '{tmp_path}'"], check_required=False)
    with pytest.raises(FileNotFoundError, match='no tokenizer.json.*HF_TOKENIZER_PATH'):
      gin.query_parameter('%VOCABULARY').scoped_configurable_fn()
  finally:
    gin.clear_config()
    vocab.reset_default_vocabulary()


def test_model_gin_ids_must_match_the_checkpoint(hf_dir):
  """Decoding stops at the gin's eos_ids while the tasks append the checkpoint's
  EOS: a model gin whose special ids differ from config.json fails before training."""
  from distill_sbs.training import config_checks  # pylint: disable=g-import-not-at-top
  d, cfg, _ = hf_dir
  config_checks.check_hf_config(str(d), cfg.replace(dtype='bfloat16'))
  with pytest.raises(config_checks.ConfigError, match=r'eos_ids: \(\d+,\) in config.json, '
                     r'\(1,\) in the model gin'):
    config_checks.check_hf_config(str(d), cfg.replace(eos_ids=(1,)))
  with pytest.raises(config_checks.ConfigError, match='pad_id'):
    config_checks.check_hf_config(str(d), cfg.replace(pad_id=0))
