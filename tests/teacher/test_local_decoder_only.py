"""Local teacher backend with a decoder-only teacher: a tiny random Qwen3-like LM
over the byte vocabulary (ids 0 pad, 1 EOS, 2 UNK, bytes from 3), on the 8 host
devices: its completions, their top-k (= teacher-forced `models.topk_scores`),
an HF checkpoint directory, and the loopback HTTP server serving it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax.core import meta

from distill_sbs import models
from distill_sbs.data import schema
from distill_sbs.teacher import base
from distill_sbs.teacher import generation
from distill_sbs.teacher import local_t5
from distill_sbs.teacher import openai_backend
from distill_sbs.teacher.loopback import LocalBackendResponder, LoopbackServer
from distill_sbs.teacher.prompts import Prompt

K = 4
MAX_TOKENS = 10
CONFIG = models.DecoderOnlyConfig(
    model_type='qwen3', vocab_size=272, emb_dim=32, num_heads=4, num_kv_heads=2,
    num_layers=2, head_dim=8, mlp_dim=48, qk_norm=True, rope_theta=10000.0,
    pad_id=0, eos_ids=(1,))
VOCAB = seqio.ByteVocabulary()  # 259 ids <= 272
PROMPTS = ['Q: what is 2 + 3?\nA:', 'hi', 'A longer prompt about cats and dogs, and birds.']


@pytest.fixture(scope='module')
def params():
  x = jnp.ones((1, 8), jnp.int32)
  p = meta.unbox(models.DecoderOnlyTransformer(CONFIG).init(
      jax.random.PRNGKey(0), x, enable_dropout=False)['params'])
  return jax.tree.map(lambda a: a * 3.0, p)  # spread the logits


def _backend(params, config=CONFIG, **kw):
  kw = {'batch_size': 4, 'k': K, 'max_input_length': 64, **kw}
  return local_t5.LocalT5Backend(config=config, params=params, vocabulary=VOCAB, **kw)


@pytest.fixture(scope='module')
def backend(params):
  return _backend(params)


def _forced_topk(config, params, prompt_ids, target):
  ids, lps = models.topk_scores(config, params, np.asarray([prompt_ids], np.int32),
                                np.asarray([target], np.int32), K)
  return np.asarray(ids)[0], np.asarray(lps)[0]


def test_completions_and_topk_equal_teacher_forced(backend, params):
  assert backend.decoder_only and backend.mesh.devices.size == 8
  assert local_t5.LocalBackend is local_t5.LocalT5Backend
  prompts = [Prompt(id=str(i), text=t) for i, t in enumerate(PROMPTS)]
  before = dict(backend.stats)
  results = backend.generate_batch(prompts, base.SamplingConfig(max_tokens=MAX_TOKENS))
  assert [r.id for r in results] == ['0', '1', '2']
  for p, r in zip(prompts, results):
    (c,) = r.completions
    prompt_ids = backend.encode_prompt(p.text)
    assert prompt_ids == list(VOCAB.encode(p.text))  # no BOS in the config, no EOS
    assert r.prompt_tokens == len(prompt_ids)
    length = len(c.target_ids)
    assert c.topk_ids.shape == c.topk_logprobs.shape == (length, K) and c.num_tokens == length
    assert c.target_ids[-1] == CONFIG.eos_id and CONFIG.eos_id not in c.target_ids[:-1]
    forced_ids, forced_lps = _forced_topk(CONFIG, params, prompt_ids, c.target_ids)
    np.testing.assert_array_equal(c.topk_ids, forced_ids)
    np.testing.assert_allclose(c.topk_logprobs, forced_lps, atol=2e-4)
    # Greedy: every generated token is the top-1 of its position.
    n_gen = length - (c.finish_reason != 'stop')
    np.testing.assert_array_equal(c.topk_ids[:n_gen, 0], c.target_ids[:n_gen])
    assert c.text == backend.decode(c.target_ids) and c.vocab_size == CONFIG.vocab_size
  # Rows of different lengths decode together: each alone gives the same tokens.
  for p, r in zip(prompts, results):
    (alone,) = backend.generate_batch([p], base.SamplingConfig(max_tokens=MAX_TOKENS))
    np.testing.assert_array_equal(alone.completions[0].target_ids, r.completions[0].target_ids)
  # (A random teacher rarely emits EOS: targets ended by the length limit are
  # scored teacher-forced, as their appended EOS was never a decoding step.)
  delta = {k: backend.stats[k] - before[k] for k in ('topk_from_decoding',
                                                     'topk_teacher_forced')}
  assert sum(delta.values()) == 6


def test_eos_of_the_config_stops_and_cut_targets_are_teacher_forced(backend, params):
  """An EOS from `config.eos_ids` (here also a token the model generates) ends
  the completion; a stop sequence cuts the text and its target is scored
  teacher-forced. Id 0 (the pad id) is never treated as an end."""
  p = Prompt(id='x', text=PROMPTS[0])
  (free,) = backend.generate_batch([p], base.SamplingConfig(max_tokens=MAX_TOKENS))
  ids = free.completions[0].target_ids
  stop_tok = int(ids[3])
  cfg = CONFIG.replace(eos_ids=(1, stop_tok))
  stopping = _backend(params, config=cfg)
  (r,) = stopping.generate_batch([p], base.SamplingConfig(max_tokens=MAX_TOKENS))
  c = r.completions[0]
  first = int(np.nonzero(ids == stop_tok)[0][0])
  assert c.finish_reason == 'stop'
  np.testing.assert_array_equal(c.target_ids, np.append(ids[:first], 1))
  forced_ids, forced_lps = _forced_topk(cfg, params, stopping.encode_prompt(p.text),
                                        c.target_ids)
  np.testing.assert_array_equal(c.topk_ids, forced_ids)
  np.testing.assert_allclose(c.topk_logprobs, forced_lps, atol=2e-4)
  assert stopping.stats['topk_from_decoding'] == 1  # collected while decoding
  assert stopping.stats['topk_teacher_forced'] == 0
  # A stop sequence: the cut text re-encoded + EOS, top-k teacher-forced.
  text = free.completions[0].text
  if len(text) >= 3:
    before = backend.stats['topk_teacher_forced']
    (cut,) = backend.generate_batch([p], base.SamplingConfig(max_tokens=MAX_TOKENS),
                                    stop=[text[2:3]])
    cc = cut.completions[0]
    assert cc.text == text[:text.find(text[2:3])] and cc.finish_reason == 'stop'
    forced_ids, _ = _forced_topk(CONFIG, params, backend.encode_prompt(p.text), cc.target_ids)
    np.testing.assert_array_equal(cc.topk_ids, forced_ids)
    assert backend.stats['topk_teacher_forced'] == before + 1
  # Pad id 0 is a real token for decoder-only teachers: not an end of text.
  row = np.asarray([5, 0, 7, 1, 0], np.int32)
  assert backend._target(row)[1] == 'stop'  # pylint: disable=protected-access
  np.testing.assert_array_equal(backend._target(row)[0], [5, 0, 7])  # pylint: disable=protected-access


def test_run_writes_topk_records(backend, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  from distill_sbs.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  rows = tmp_path / 'in.jsonl'
  rows.write_text(''.join(json.dumps({'id': f's{i}', 'input': f'Sam has {i} pens.\nHow many?',
                                      'label': f'( {i}.0 )'}) + '\n' for i in range(3)))
  config = generation.GenerationConfig(out_dir=str(tmp_path / 'out'), dataset='svamp',
                                       input_jsonl=str(rows), progress=False)
  manifest = generation.run(config, backend, base.SamplingConfig(max_tokens=MAX_TOKENS))
  records = list(schema.read_records(str(tmp_path / 'out' / 'train.tfrecord-*')))
  assert [r['id'] for r in records] == ['s0', 's1', 's2']
  for r in records:
    ids, _ = schema.decode_topk(r)
    assert ids.shape == (len(r['teacher_target_ids']), K)
    assert r['teacher_target_ids'][-1] == CONFIG.eos_id
    assert r['teacher_vocab_hash'] == vocab_lib.vocab_hash(VOCAB)
  assert manifest['backend']['architecture'] == 'decoder_only'


def test_bos_and_truncation(params):
  b = _backend(params, config=CONFIG.replace(bos_id=2), max_input_length=16)
  ids = b.encode_prompt('x' * 40)
  assert len(ids) == 16 and ids[0] == 2 and ids[1:] == list(VOCAB.encode('x' * 15))
  assert b.stats['truncated_prompts'] == 1
  assert _backend(params).encode_prompt('') == [CONFIG.pad_id]


def test_hf_checkpoint_directory(backend, params, tmp_path):
  models.save_hf_checkpoint(tmp_path, CONFIG, params)
  with pytest.raises(ValueError, match='vocabulary'):
    local_t5.LocalT5Backend(str(tmp_path))
  hf = local_t5.LocalT5Backend(str(tmp_path), vocabulary=VOCAB, batch_size=4, k=K,
                               max_input_length=64)
  assert hf.decoder_only and hf.describe()['architecture'] == 'decoder_only'
  prompts = [Prompt(id='p', text=PROMPTS[2])]
  sampling = base.SamplingConfig(max_tokens=MAX_TOKENS)
  (a,), (b,) = hf.generate_batch(prompts, sampling), backend.generate_batch(prompts, sampling)
  np.testing.assert_array_equal(a.completions[0].target_ids, b.completions[0].target_ids)
  np.testing.assert_allclose(a.completions[0].topk_logprobs, b.completions[0].topk_logprobs,
                             atol=1e-5)


def test_hf_directory_with_tokenizer_json(tmp_path):
  """A Qwen3 directory with a byte-level BPE `tokenizer.json` (id 0 is '!', a
  real token; EOS and pad are special ids at the end): its vocabulary is read
  from the directory, prompts keep id 0, EOS / pad are the config's."""
  from tests.data.test_hf_vocab import TEXTS, _train  # pylint: disable=g-import-not-at-top
  from distill_sbs.data import hf_vocab  # pylint: disable=g-import-not-at-top
  tok = _train(TEXTS)
  eos, pad = tok.token_to_id('<|endoftext|>'), tok.token_to_id('<pad>')
  cfg = CONFIG.replace(vocab_size=320, eos_ids=(eos,), pad_id=pad)
  x = jnp.ones((1, 8), jnp.int32)
  p = meta.unbox(models.DecoderOnlyTransformer(cfg).init(
      jax.random.PRNGKey(1), x, enable_dropout=False)['params'])
  p = jax.tree.map(lambda a: a * 3.0, p)
  models.save_hf_checkpoint(tmp_path, cfg, p)
  tok.save(str(tmp_path / 'tokenizer.json'))
  b = local_t5.LocalT5Backend(str(tmp_path), batch_size=4, k=K, max_input_length=64)
  assert isinstance(b.vocabulary, hf_vocab.HfTokenizerVocabulary)
  assert (b.eos_ids, b.pad_id) == ((eos,), pad)
  text = 'Hi! the answer is yes!'
  ids = b.encode_prompt(text)
  assert 0 in ids and ids == list(b.vocabulary.encode(text)) and eos not in ids
  (r,) = b.generate_batch([Prompt(id='h', text=text)], base.SamplingConfig(max_tokens=6))
  c = r.completions[0]
  assert c.target_ids[-1] == eos and eos not in c.target_ids[:-1]
  forced_ids, forced_lps = _forced_topk(cfg, b.params, ids, c.target_ids)
  np.testing.assert_array_equal(c.topk_ids, forced_ids)
  np.testing.assert_allclose(c.topk_logprobs, forced_lps, atol=2e-4)


def test_model_parallel_matches_data_parallel(backend, params):
  mp = _backend(params, model_parallel=2)
  assert dict(mp.mesh.shape) == {'data': 4, 'model': 2}
  prompts = [Prompt(id=str(i), text=t) for i, t in enumerate(PROMPTS[:2])]
  sampling = base.SamplingConfig(max_tokens=MAX_TOKENS)
  for a, b in zip(mp.generate_batch(prompts, sampling), backend.generate_batch(prompts, sampling)):
    np.testing.assert_array_equal(a.completions[0].target_ids, b.completions[0].target_ids)
    np.testing.assert_allclose(a.completions[0].topk_logprobs, b.completions[0].topk_logprobs,
                               rtol=2e-3, atol=2e-3)


def test_sampling_gives_seeded_different_samples(backend, params):
  p = [Prompt(id='s', text=PROMPTS[1])]
  sampling = base.SamplingConfig(max_tokens=MAX_TOKENS, num_samples=2, temperature=5.0)
  (r,) = backend.generate_batch(p, sampling, batch_index=1)
  (again,) = backend.generate_batch(p, sampling, batch_index=1)
  a, b = (c.target_ids for c in r.completions)
  assert len(a) != len(b) or np.any(a != b)
  np.testing.assert_array_equal(again.completions[0].target_ids, a)
  for c in r.completions:  # sampled tokens: the top-k is still the teacher-forced one
    forced_ids, forced_lps = _forced_topk(CONFIG, params, backend.encode_prompt(PROMPTS[1]),
                                          c.target_ids)
    np.testing.assert_array_equal(c.topk_ids, forced_ids)
    np.testing.assert_allclose(c.topk_logprobs, forced_lps, atol=2e-4)


@pytest.fixture(scope='module')
def t5_backend():
  cfg = models.T5Config(vocab_size=272, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                        num_encoder_layers=1, num_decoder_layers=1,
                        relative_attention_num_buckets=8, relative_attention_max_distance=20)
  x = jnp.ones((1, 8), jnp.int32)
  p = meta.unbox(models.Transformer(cfg).init(jax.random.PRNGKey(0), x, x, x,
                                              enable_dropout=False)['params'])
  return local_t5.LocalT5Backend(config=cfg, params=jax.tree.map(lambda a: a * 3.0, p),
                                 vocabulary=VOCAB, batch_size=4, k=K, max_input_length=64)


@pytest.mark.parametrize('kind,chat', [('decoder_only', False), ('decoder_only', True),
                                       ('t5', False)])
def test_loopback_server_serves_the_same_ids_and_topk(request, kind, chat):
  backend = request.getfixturevalue('backend' if kind == 'decoder_only' else 't5_backend')
  assert backend.decoder_only == (kind == 'decoder_only')
  responder = LocalBackendResponder(backend)
  prompts = [Prompt(id=str(i), text=t) for i, t in enumerate(PROMPTS)]
  if chat:
    prompts = [Prompt(id=p.id, messages=(('user', p.text),)) for p in prompts]
  sampling = base.SamplingConfig(max_tokens=MAX_TOKENS, top_logprobs=K)
  local = {r.id: r.completions[0] for r in backend.generate_batch(
      [Prompt(id=p.id, text=p.flat_text()) for p in prompts], sampling)}
  with LoopbackServer(responder, tokenizer=responder) as server:
    client = openai_backend.OpenAIBackend(server.base_url, 'local-teacher', concurrency=2,
                                          timeout=60, logprob_token_ids=True)
    served = {r.id: r for r in client.generate(prompts, sampling)}
  assert sorted(served) == ['0', '1', '2']
  for pid, want in local.items():
    (c,) = served[pid].completions
    assert c.text == want.text
    fields = generation._http_topk(c)  # pylint: disable=protected-access
    assert fields is not None, c.tokens
    np.testing.assert_array_equal(fields['teacher_target_ids'], want.target_ids)
    ids, lps = schema.decode_topk(fields)
    np.testing.assert_array_equal(ids, want.topk_ids)
    np.testing.assert_allclose(lps, want.topk_logprobs, rtol=1e-3, atol=2e-3)  # fp16 storage
    # Each token's own log-prob: greedy tokens are the top-1.
    n_gen = len(want.target_ids) - (want.finish_reason != 'stop')
    np.testing.assert_allclose(c.token_logprobs[:n_gen], want.topk_logprobs[:n_gen, 0],
                               atol=2e-4)
    if chat:  # bytes of each token: the vocabulary's decoding of its id
      assert c.token_bytes[0] == list(backend.decode(want.target_ids[:1]).encode()) or (
          c.token_bytes[0] is None)
