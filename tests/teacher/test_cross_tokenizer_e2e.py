"""FIRST from a served teacher whose tokenizer is not the student's, end to end.

The loopback server answers with log-probs in the test's own tokenizer (words
spelled as byte-level BPE, 'Ġcat', with '<|endoftext|>'), from a bigram model
whose reported log-probs are twice as sharp as the distribution the completions
are sampled from. `generate_rationales --backend=openai --top_logprobs=5`
carries them onto a SentencePiece student whose pieces hold some of the words
whole and split the others → records → `calibrate` (T ≈ 2) → a FIRST run of the
project's trainer whose KL falls.
"""
import json
import os
import subprocess
import sys
import zlib

import jax
import numpy as np
import optax
import pytest
import seqio
from flax.core import meta

from distill_sbs import calibrate, models
from distill_sbs.data import cross_tokenizer as ct
from distill_sbs.data import schema, topk
from distill_sbs.distill import losses
from distill_sbs.tasks import first
from distill_sbs.teacher import base, generation, openai_backend
from distill_sbs.teacher.loopback import LoopbackServer
from distill_sbs.training import input_pipeline, train_loop
from distill_sbs.training import model as training_model
from tests.data.spm_helpers import write_spm_model
from tests.teacher.teacher_helpers import KEY_ENV, SECRET

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ['the', 'cat', 'sat', 'on', 'mat', 'a', 'dog', 'ran', 'far', 'fat', 'big']
EOT = '<|endoftext|>'
# Student pieces: the first six words whole, the others split into letters.
PIECES = ['▁' + w for w in WORDS[:6]] + ['▁', '▁d', '▁r', '▁f', '▁b'] + list('dogranfbi')
MAX_WORDS, SHARPEN, K = 6, 2.0, 5
IN_LEN, TGT_LEN = 16, 24


class BigramTeacher:
  """A word-bigram teacher; its tokens are byte-level BPE spellings."""

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    self.logits = rng.normal(0, 1.5, (len(WORDS) + 1, len(WORDS) + 1))  # [prev + BOS, next + EOT]
    self.logits[:, -1] -= 1.0

  def spell(self, i, first):
    return EOT if i == len(WORDS) else ('' if first else 'Ġ') + WORDS[i]

  def dist(self, prev):
    z = self.logits[prev]
    return np.exp(z - np.logaddexp.reduce(z)), z

  def respond(self, prompt, body):
    del body
    rng = np.random.default_rng(zlib.crc32(prompt.encode()))
    words, prev = [], len(WORDS)
    while len(words) < MAX_WORDS:
      p, _ = self.dist(prev)
      i = int(rng.choice(len(p), p=p))
      if i == len(WORDS):
        break
      words.append(WORDS[i])
      prev = i
    return ' '.join(words)

  def logprobs(self, prompt, text, k):
    del prompt
    words = text.split(' ') if text else []
    ids = [WORDS.index(w) for w in words] + [len(WORDS)]
    rows, prev = [], len(WORDS)
    for n, i in enumerate(ids):
      _, z = self.dist(prev)
      lp = SHARPEN * z - np.logaddexp.reduce(SHARPEN * z)  # over-confident by 2
      top = np.argsort(-lp, kind='stable')[:k]
      rows.append((self.spell(i, n == 0), float(lp[i]),
                   [(self.spell(j, n == 0), float(lp[j])) for j in top]))
      prev = i
    return rows

  def token_bytes(self, token):
    return None if token == EOT else ct.token_bytes(token, 'byte_bpe')


def _student_spm(path):
  return write_spm_model(path, PIECES)


def _train_student(model, tmp_path, task, lengths, steps, log_period):
  """The project's trainer on a FIRST task (top-k converter, batch 16)."""
  return train_loop.train(
      model=model, model_dir=str(tmp_path / 'student'), total_steps=steps,
      log_period=log_period,
      train_dataset_cfg=input_pipeline.DatasetConfig(
          task, lengths, batch_size=16, shuffle=False, module=None,
          feature_converter_cls=topk.TopKFeatureConverter),
      checkpoint_period=1000, keep_checkpoints=1, progress_bar=False,
      async_checkpointing=False, initial_checkpoint_path=None, random_seed=1)


def _student_and_teacher(tmp_path, monkeypatch):
  """(student SentencePiece path, its vocabulary, the bigram teacher); the
  server's API key in the environment."""
  monkeypatch.setenv(KEY_ENV, SECRET)
  spm_path = _student_spm(tmp_path / 'student.model')
  return spm_path, seqio.SentencePieceVocabulary(spm_path, extra_ids=0), BigramTeacher()


def _rows(path, n, offset):
  with open(path, 'w', encoding='utf-8') as f:
    for i in range(n):
      f.write(json.dumps({'id': f'q{offset + i}', 'inputs': f'question number {offset + i}?'}) + '\n')
  return str(path)


def _cli(server, rows, out_dir, spm_path):
  return [sys.executable, '-m', 'distill_sbs.generate_rationales', '--dataset=cqa',
          f'--input_jsonl={rows}', '--split=train', '--backend=openai',
          f'--base_url={server.base_url}', '--model=bigram', f'--out_dir={out_dir}',
          '--concurrency=4', '--timeout=10', '--temperature=0', f'--api_key_env={KEY_ENV}',
          '--top_logprobs=5', f'--student_spm_path={spm_path}',
          '--teacher_tokenizer=test-bigram-bpe', '--noprogress']


def test_served_teacher_in_another_tokenizer_trains_first(tmp_path, monkeypatch, capsys):
  spm_path, vocab, teacher = _student_and_teacher(tmp_path, monkeypatch)
  out = tmp_path / 'first_xt'
  with LoopbackServer(teacher.respond, tokenizer=teacher) as server:
    # Train split through the command line (completions shape, token strings).
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'JAX_PLATFORMS': 'cpu'}
    proc = subprocess.run(_cli(server, _rows(tmp_path / 'train.jsonl', 48, 0), out, spm_path),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Validation split in process (chat shape, token bytes).
    backend = openai_backend.OpenAIBackend(server.base_url, 'bigram', api_key_env=KEY_ENV)
    generation.run(
        generation.GenerationConfig(out_dir=str(out), dataset='cqa', split='validation',
                                    input_jsonl=_rows(tmp_path / 'val.jsonl', 160, 1000),
                                    chat=True, progress=False),
        backend, base.SamplingConfig(top_logprobs=5),
        generation.CarryConfig(student_spm_path=spm_path, teacher_tokenizer='test-bigram-bpe'))
  manifest = json.loads((out / 'manifest.json').read_text())
  xt = manifest['cross_tokenizer']
  assert xt['teacher_tokenizer'] == 'test-bigram-bpe'
  # (A one-word completion reads the same as plain text.)
  assert sum(xt['conventions'].values()) == 160 and xt['conventions']['byte_bpe'] > 140
  assert 0.3 < xt['aligned_share'] < 1.0 and xt['zero'] > 0
  assert 0.9 < xt['carried_mass_share'] <= 1.0 + 1e-6
  train = list(schema.read_records(str(out / 'train.tfrecord-*')))
  assert len(train) == 48
  rec = train[0]
  assert list(rec['teacher_target_ids']) == vocab.encode(rec['llm_output']) + [1]
  tokens, _ = ct.decode_teacher_topk(rec['teacher_tokens_raw'])
  assert b''.join(tokens) == rec['llm_output'].encode() + EOT.encode()
  ids, lps = schema.decode_topk(rec)
  assert ids.shape == (len(rec['teacher_target_ids']), K)
  assert (lps[-1] > -1e3).any()   # the EOS row carries the teacher's <|endoftext|>

  # Calibrate on the carried distributions: the teacher is over-confident by ~2.
  report = calibrate.main([f'--records={out}', '--split=validation', '--gold_field=llm_output',
                           f'--plot_dir={tmp_path / "plots"}'])
  assert 1.4 < report['temperature'] < 3.0, report
  assert report['nll_after'] < report['nll_before'] and report['ece_after'] < report['ece_before']
  assert 'ECE  before' in capsys.readouterr().out
  assert (tmp_path / 'plots' / 'teacher_reliability_after.png').stat().st_size > 0

  # A FIRST run of the project's trainer on the carried records.
  first.register_first_tasks('first_xt_e2e_test', str(out), vocabulary=vocab,
                             topk_field='llm_output')
  lengths = {'inputs': IN_LEN, 'targets': TGT_LEN}
  ds = seqio.get_dataset('first_xt_e2e_test', lengths, dataset_split='train', shuffle=False,
                         feature_converter=topk.TopKFeatureConverter())
  batch = next(ds.batch(16).as_numpy_iterator())
  t_cal = topk.teacher_temperature(task='first_xt_e2e_test')
  loss_fn = losses.TopKDistillLoss(teacher_temperature=t_cal, kl_weight=1.0, rest_bucket=True)
  config = models.T5Config(vocab_size=32, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                           num_encoder_layers=1, num_decoder_layers=2,
                           relative_attention_num_buckets=8, relative_attention_max_distance=20)
  assert vocab.vocab_size <= config.vocab_size
  model = training_model.EncoderDecoderModel(
      module=models.Transformer(config), input_vocabulary=vocab, output_vocabulary=vocab,
      optimizer_def=optax.adam(1e-2), loss_fn=loss_fn)
  x = jax.numpy.ones((2, 8), jax.numpy.int32)
  init = meta.unbox(model.module.init(jax.random.PRNGKey(1), x, x, x,
                                      enable_dropout=False)['params'])

  def kl_of(p):
    logits = model.module.apply({'params': p}, batch['encoder_input_tokens'],
                                batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                                enable_dropout=False)
    return float(loss_fn(logits, batch)[1]['kl'])

  state, _ = _train_student(model, tmp_path, 'first_xt_e2e_test', lengths, 30, 10)
  before, after = kl_of(init), kl_of(meta.unbox(state.params))
  assert after < 0.5 * before, (before, after)


def test_uld_records_train_with_the_uld_term(tmp_path, monkeypatch):
  """--carry_mismatch=uld: unaligned tokens keep the teacher's sorted top-k, and
  `uld.CrossTokenizerTopKLoss` trains on both kinds of rows."""
  from distill_sbs.distill import uld  # pylint: disable=g-import-not-at-top
  spm_path, vocab, teacher = _student_and_teacher(tmp_path, monkeypatch)
  out = tmp_path / 'first_uld'
  with LoopbackServer(teacher.respond, tokenizer=teacher) as server:
    backend = openai_backend.OpenAIBackend(server.base_url, 'bigram', api_key_env=KEY_ENV)
    manifest = generation.run(
        generation.GenerationConfig(out_dir=str(out), dataset='cqa', split='train',
                                    input_jsonl=_rows(tmp_path / 'train.jsonl', 32, 0),
                                    progress=False),
        backend, base.SamplingConfig(top_logprobs=5),
        generation.CarryConfig(student_spm_path=spm_path, mismatch='uld'))
  xt = manifest['cross_tokenizer']
  assert xt['uld'] > 0 and xt['zero'] < xt['uld'] and xt['mismatch'] == 'uld'
  recs = list(schema.read_records(str(out / 'train.tfrecord-*')))
  assert any(ct.is_uld_row(*schema.decode_topk(r)).any() for r in recs)
  first.register_first_tasks('first_xt_uld_test', str(out), vocabulary=vocab)
  lengths = {'inputs': IN_LEN, 'targets': TGT_LEN}
  loss_fn = uld.CrossTokenizerTopKLoss(
      base=losses.TopKDistillLoss(kl_weight=1.0, rest_bucket=True), uld_weight=1.0)
  config = models.T5Config(vocab_size=32, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                           num_encoder_layers=1, num_decoder_layers=2,
                           relative_attention_num_buckets=8, relative_attention_max_distance=20)
  model = training_model.EncoderDecoderModel(
      module=models.Transformer(config), input_vocabulary=vocab, output_vocabulary=vocab,
      optimizer_def=optax.adam(1e-2), loss_fn=loss_fn)
  _train_student(model, tmp_path, 'first_xt_uld_test', lengths, 20, 5)
  rows = [json.loads(l) for l in (tmp_path / 'student' / 'metrics.jsonl').read_text().splitlines()]
  rows = [r for r in rows if 'uld' in r]
  assert rows[0]['uld_tokens'] > 0
  assert rows[-1]['uld'] < rows[0]['uld'] and rows[-1]['kl'] < rows[0]['kl'], rows


def test_chat_token_bytes_are_kept_and_win_over_the_spelling():
  from openai.types.chat.chat_completion import Choice  # pylint: disable=g-import-not-at-top
  choice = Choice.model_validate({
      'index': 0, 'finish_reason': 'stop', 'message': {'role': 'assistant', 'content': 'é'},
      'logprobs': {'content': [
          {'token': 'bytes:\\xc3', 'logprob': -0.1, 'bytes': [0xC3],
           'top_logprobs': [{'token': 'bytes:\\xc3', 'logprob': -0.1, 'bytes': [0xC3]}]},
          {'token': '?', 'logprob': -0.2, 'bytes': [0xA9],
           'top_logprobs': [{'token': '?', 'logprob': -0.2, 'bytes': [0xA9]},
                            {'token': 'x', 'logprob': -3.0, 'bytes': None}]}]}})
  c = openai_backend._completion_from_choice(choice, chat=True)  # pylint: disable=protected-access
  assert c.token_bytes == [[0xC3], [0xA9]] and c.top_bytes == [[[0xC3]], [[0xA9], None]]
  tok, top, _ = ct.decode_teacher_tokens(c.tokens, c.top_logprobs, c.text,
                                         tokens_bytes=c.token_bytes, top_bytes=c.top_bytes)
  assert tok == [b'\xc3', b'\xa9'] and top[1] == [(b'\xa9', -0.2), (b'x', -3.0)]
