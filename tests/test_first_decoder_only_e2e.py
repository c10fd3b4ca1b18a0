"""FIRST end to end with decoder-only models on CPU, through the teacher
backends: a tiny random Qwen3 teacher (the shape of
t5x_configs/models/qwen3/tiny.gin, another seed, the byte vocabulary) writes
top-k records of cqa inputs (`teacher.generation.run`) (a) through the local
backend and (b) through the OpenAI backend against the loopback HTTP server
serving that local backend ('token_id:N' tokens); the records are calibrated
(`python -m distill_sbs.calibrate`) and the qwen3 tiny student trains on each
through the composed experiment (qwen3/tiny.gin + gin/runs/cpu.gin +
gin/methods/first.gin + gin/datasets/cqa.gin).

Asserts: the records carry the student vocabulary's hash (a different hash is
refused by the FIRST task with `VocabularyMismatchError`); the HTTP records
equal the local backend's; the packed decoder-only FIRST batch holds each
record's top-k rows exactly on the positions predicting its target tokens (0
elsewhere); the calibrated T reaches the loss; the loss falls.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax.core import meta

from distill_sbs import calibrate, models
from distill_sbs.data import record_sources, schema, topk
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.distill import losses
from distill_sbs.teacher import base, generation, local_t5, openai_backend
from distill_sbs.teacher.loopback import LocalBackendResponder, LoopbackServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ['t5x_configs/models/qwen3/tiny.gin', 'gin/runs/cpu.gin', 'gin/methods/first.gin',
         'gin/datasets/cqa.gin']
VOCAB = seqio.ByteVocabulary(extra_ids=100)  # the project's default vocabulary
K, N_TRAIN, N_VAL, MAX_TOKENS = 5, 16, 8, 8
# Training rows: the inputs cut to 40 tokens (a fast CPU step; one example a
# row). The packed-batch check reads whole inputs (< 210 bytes), 2-3 a row.
INPUTS_LENGTH, LABEL_LENGTH, PACKED_INPUTS_LENGTH = 40, 16, 400
# t5x_configs/models/qwen3/tiny.gin's network.
TEACHER = models.DecoderOnlyConfig(
    model_type='qwen3', vocab_size=384, dtype='float32', param_dtype='float32', emb_dim=64,
    num_heads=4, num_kv_heads=2, num_layers=2, head_dim=16, mlp_dim=128,
    mlp_activation='silu', layer_norm_epsilon=1e-6, qk_norm=True, rope_theta=1e6,
    logits_via_embedding=True, max_position_embeddings=2048, pad_id=0, eos_ids=(1,))


@pytest.fixture(scope='module')
def teacher_backend():
  x = jnp.ones((1, 8), jnp.int32)
  p = meta.unbox(models.DecoderOnlyTransformer(TEACHER).init(
      jax.random.PRNGKey(7), x, enable_dropout=False)['params'])
  # Spread the logits: the top-5 holds ~80% of the teacher's mass.
  p = jax.tree.map(lambda a: a * 3.0, p)
  p['decoder']['token_embedder']['embedding'] *= 3.0
  return local_t5.LocalT5Backend(config=TEACHER, params=p, vocabulary=VOCAB, batch_size=8,
                                 k=K, max_input_length=64)


@pytest.fixture(autouse=True)
def _default_vocabulary(monkeypatch):
  for var in (vocab_lib.SPM_PATH_ENV, vocab_lib.HF_TOKENIZER_ENV):
    monkeypatch.delenv(var, raising=False)
  vocab_lib.reset_default_vocabulary()
  yield
  vocab_lib.reset_default_vocabulary()


def _generate(backend, data_dir, out_dir, split, n, temperature=0.0):
  config = generation.GenerationConfig(out_dir=str(out_dir), dataset='cqa', split=split,
                                       data_dir=str(data_dir), max_examples=n, progress=False)
  sampling = base.SamplingConfig(max_tokens=MAX_TOKENS, top_logprobs=K, temperature=temperature,
                                 seed=0)
  generation.run(config, backend, sampling, generation.CarryConfig(enabled=False))
  return list(schema.read_records(os.path.join(str(out_dir), f'{split}.tfrecord-*')))


def _train(model_dir, bindings=()):
  import gin  # pylint: disable=g-import-not-at-top
  from distill_sbs.experiments import runs as runs_lib  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import gin_utils  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import train_loop  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_utils.parse_gin(PARTS, [
        f"MODEL_DIR = '{model_dir}'", 'TRAIN_STEPS = 20', 'BATCH_SIZE = 8', 'LOG_PERIOD = 1',
        'EVAL_PERIOD = 0', 'CHECKPOINT_PERIOD = 1000', 'LEARNING_RATE = 0.1',
        f'INPUTS_LENGTH = {INPUTS_LENGTH}', f'LABEL_LENGTH = {LABEL_LENGTH}',
        'ALLOW_TRUNCATION = True', *bindings])
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    loss_fn = gin.query_parameter('%LOSS_FN').scoped_configurable_fn()
    gin.get_configurable(train_loop.train)()
  finally:
    gin.clear_config()
  return model, loss_fn, runs_lib.read_metrics(f'{model_dir}/metrics.jsonl')


def _check_packed_batch(model, task, records):
  """Every packed segment's top-k rows are its record's, on the positions
  predicting its target tokens; nothing elsewhere."""
  from distill_sbs.training import input_pipeline  # pylint: disable=g-import-not-at-top
  cfg = input_pipeline.DatasetConfig(
      task, {'inputs': PACKED_INPUTS_LENGTH, 'targets': LABEL_LENGTH}, batch_size=8,
      shuffle=False,
      pack=True, feature_converter_cls=topk.TopKFeatureConverter)
  by_targets = {tuple(int(t) for t in r['teacher_target_ids']): r for r in records}
  seen = rows = 0
  for batch in input_pipeline.get_dataset(cfg, model, num_epochs=1,
                                          drop_remainder=False).as_numpy_iterator():
    assert batch['decoder_topk_ids'].shape[-1] == K
    w = batch['decoder_loss_weights'] > 0
    assert not batch['decoder_topk_ids'][~w].any()
    assert not batch['decoder_topk_logprobs'][~w].any()
    seg = batch['decoder_segment_ids']
    for row in range(seg.shape[0]):
      rows += bool((seg[row] > 0).any())
      for s in set(seg[row][seg[row] > 0].tolist()):
        pos = np.nonzero((seg[row] == s) & w[row])[0]
        rec = by_targets[tuple(batch['decoder_target_tokens'][row, pos].tolist())]
        ids, lps = schema.decode_topk(rec)
        np.testing.assert_array_equal(batch['decoder_topk_ids'][row, pos], ids)
        np.testing.assert_allclose(batch['decoder_topk_logprobs'][row, pos], lps, atol=1e-6)
        seen += 1
  assert seen == len(records)
  assert rows < seen  # packed: rows hold several examples


def test_first_decoder_only_local_and_loopback(teacher_backend, sbs_data_dir, tmp_path,
                                               monkeypatch):
  import distill_sbs.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from distill_sbs.tasks import first  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'data'
  (root / 'first').mkdir(parents=True)
  os.symlink(sbs_data_dir / 'cqa', root / 'cqa')
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(root))
  monkeypatch.chdir(REPO)
  student_hash = vocab_lib.vocab_hash(VOCAB)

  # (a) The local backend writes the FIRST records of first_cqa_label, its
  # answers sampled from it (temperature 1).
  local_dir = root / 'first' / 'cqa'
  recs = _generate(teacher_backend, sbs_data_dir, local_dir, 'train', N_TRAIN, 1.0)
  _generate(teacher_backend, sbs_data_dir, local_dir, 'validation', N_VAL, 1.0)
  assert len(recs) == N_TRAIN
  assert {r['teacher_vocab_hash'] for r in recs} == {student_hash}
  for r in recs:
    ids, _ = schema.decode_topk(r)
    assert ids.shape == (len(r['teacher_target_ids']), K)
    assert r['teacher_target_ids'][-1] == TEACHER.eos_id
  report = calibrate.main([f'--records={local_dir}', '--split=validation',
                           '--gold_field=llm_output'])
  assert report['temperature'] > 0 and report['nll_after'] <= report['nll_before'], report

  # (b) The same teacher over HTTP (greedy): the OpenAI backend against the
  # loopback server; its records equal the local backend's greedy ones.
  greedy = _generate(teacher_backend, sbs_data_dir, tmp_path / 'greedy', 'train', N_TRAIN)
  http_dir = tmp_path / 'http'
  responder = LocalBackendResponder(teacher_backend)
  with LoopbackServer(responder, tokenizer=responder) as server:
    client = openai_backend.OpenAIBackend(
        server.base_url, 'local-teacher', concurrency=2, timeout=60, logprob_token_ids=True,
        teacher_vocab_hash=student_hash)
    http_recs = _generate(client, sbs_data_dir, http_dir, 'train', N_TRAIN)
  assert [r['id'] for r in http_recs] == [r['id'] for r in greedy]
  for a, b in zip(greedy, http_recs):
    assert b['teacher_vocab_hash'] == student_hash
    np.testing.assert_array_equal(b['teacher_target_ids'], a['teacher_target_ids'])
    (ia, la), (ib, lb) = schema.decode_topk(a), schema.decode_topk(b)
    np.testing.assert_array_equal(ib, ia)
    np.testing.assert_allclose(lb, la, rtol=1e-3, atol=2e-3)
  calibrate.main([f'--records={http_dir}', '--split=train', '--gold_field=llm_output'])
  seqio.TaskRegistry.remove('first_do_http')
  first.register_first_tasks('first_do_http', str(http_dir), ds='cqa')

  # A teacher of another vocabulary is refused, naming both hashes.
  bad_dir = tmp_path / 'bad'
  schema.write_shards(str(bad_dir), 'train',
                      [dict(r, teacher_vocab_hash='0' * 64) for r in recs[:2]])
  seqio.TaskRegistry.remove('first_do_bad')
  first.register_first_tasks('first_do_bad', str(bad_dir), ds='cqa')
  with pytest.raises(record_sources.VocabularyMismatchError,
                     match=f"{'0' * 64}.*differs from the student vocabulary.*{student_hash}"):
    seqio.get_mixture_or_task('first_do_bad').get_dataset(
        {'inputs': INPUTS_LENGTH, 'targets': LABEL_LENGTH}, split='train', shuffle=False)

  # The student trains on each: the composed FIRST experiment.
  for name, task, records in (('local', 'first_cqa_label', recs),
                              ('http', 'first_do_http', http_recs)):
    model, loss_fn, rows = _train(tmp_path / name, [f"FIRST_LABEL_TASK = '{task}'"])
    assert model.config.model_type == 'qwen3'
    assert isinstance(loss_fn, losses.TopKDistillLoss)
    want_t = topk.teacher_temperature(task=task)
    assert loss_fn.teacher_temperature == want_t
    if name == 'local':
      assert want_t == report['temperature']
    train = [r for r in rows if 'kl' in r]
    assert [r['step'] for r in train] == list(range(1, 21))
    for key in ('loss', 'kl'):  # the mean of the last 3 steps vs the first 3
      curve = [r[key] for r in train]
      assert np.mean(curve[-3:]) < np.mean(curve[:3]) - 0.7, (name, key, curve)
    assert all(0 < r['decoder_slot_efficiency'] <= 1 for r in train)
    _check_packed_batch(model, task, records)


def test_generate_rationales_teacher_vocabulary_flag(tmp_path):
  """`--teacher_vocabulary=DIR` (HTTP): the records carry DIR's vocabulary hash."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from distill_sbs import generate_rationales  # pylint: disable=g-import-not-at-top
  from distill_sbs.data import hf_vocab  # pylint: disable=g-import-not-at-top
  from tests.data.test_hf_vocab import TEXTS, _train  # pylint: disable=g-import-not-at-top
  _train(TEXTS).save(str(tmp_path / 'tokenizer.json'))
  (tmp_path / 'config.json').write_text('{"eos_token_id": 300}')
  want = vocab_lib.vocab_hash(hf_vocab.HfTokenizerVocabulary(str(tmp_path)))
  f = flags.FLAGS
  try:
    f(['generate_rationales', '--base_url=http://127.0.0.1:9/v1', '--model=m',
       '--logprob_token_ids', f'--teacher_vocabulary={tmp_path}'])
    backend = generate_rationales.build_backend('openai')
    assert backend.record_fields() == {'teacher_vocab_hash': want}
    assert '--teacher_vocabulary=' in generate_rationales._flags_header()  # pylint: disable=protected-access
  finally:
    f.unparse_flags()  # back to unparsed defaults
  assert openai_backend.OpenAIBackend('http://x/v1', 'm').record_fields() == {}
