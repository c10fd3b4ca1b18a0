"""Local T5 teacher: a tiny random T5 saved as an HF directory, sharded over 8 host devices."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax.core import meta

from distill_sbs import models
from distill_sbs.data import schema
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.teacher import base
from distill_sbs.teacher import generation
from distill_sbs.teacher import local_t5
from distill_sbs.teacher.prompts import Prompt

K = 4
MAX_TOKENS = 12
CONFIG = models.T5Config(vocab_size=384, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                         num_encoder_layers=2, num_decoder_layers=2,
                         relative_attention_num_buckets=8,
                         relative_attention_max_distance=20)


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  x = jnp.ones((2, 8), jnp.int32)
  params = meta.unbox(models.Transformer(CONFIG).init(
      jax.random.PRNGKey(0), x, x, x, enable_dropout=False)['params'])
  params = jax.tree.map(lambda p: p * 3.0, params)  # spread the logits
  path = tmp_path_factory.mktemp('teacher_hf')
  models.save_hf_checkpoint(path, CONFIG, params)
  return path


@pytest.fixture(scope='module')
def backend(teacher_dir):
  return local_t5.LocalT5Backend(str(teacher_dir), batch_size=4, k=K, max_input_length=128)


def _long_prompt(i: int) -> str:  # > 128 bytes: left-truncated to the same bucket
  return ('Q: a long few-shot prefix that will be cut. ' * 4) + f'Q: what is {i} + {i}?\nA:'


def test_topk_equals_log_softmax_of_the_logits(backend):
  assert len(jax.devices()) == 8 and backend.mesh.devices.size == 8
  prompts = [Prompt(id=str(i), text=_long_prompt(i)) for i in range(3)]
  results = backend.generate_batch(prompts, base.SamplingConfig(max_tokens=MAX_TOKENS))
  assert [r.id for r in results] == ['0', '1', '2']
  config, params = models.load_hf_checkpoint(backend.checkpoint)
  for p, r in zip(prompts, results):
    (c,) = r.completions
    enc = np.zeros((1, 128), np.int32)
    ids = backend.encode_prompt(p.text)
    assert len(ids) == 128 and ids[-1] == local_t5.EOS_ID
    enc[0, :len(ids)] = ids
    target = np.asarray(c.target_ids, np.int32)[None]            # [1, L]
    length = target.shape[1]
    assert 1 <= length and c.num_tokens == length
    assert c.topk_ids.shape == c.topk_logprobs.shape == (length, K)
    shifted = np.pad(target, ((0, 0), (1, 0)))[:, :-1]
    logits = models.Transformer(config).apply({'params': params}, enc, shifted, target,
                                              enable_dropout=False)
    logp = np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32)))  # [L, vocab]
    # Stored log-probs are the log-softmax at the stored ids ...
    np.testing.assert_allclose(np.take_along_axis(logp, c.topk_ids, axis=-1),
                               c.topk_logprobs, atol=2e-4)
    # ... the ids are the k largest, best first ...
    np.testing.assert_allclose(c.topk_logprobs, -np.sort(-logp, axis=-1)[:, :K], atol=2e-4)
    assert np.all(np.diff(c.topk_logprobs, axis=-1) <= 0)
    # ... greedy decoding produced the top-1 token at every generated step, and
    # the target ends with EOS (appended when generation hit the length limit).
    assert c.target_ids[-1] == local_t5.EOS_ID and local_t5.EOS_ID not in c.target_ids[:-1]
    n_gen = length - (c.finish_reason != 'stop')
    np.testing.assert_array_equal(c.topk_ids[:n_gen, 0], c.target_ids[:n_gen])
    assert length <= MAX_TOKENS + 1
    assert c.text == backend.decode(c.target_ids)


def test_local_run_writes_topk_records(backend, tmp_path):
  rows = tmp_path / 'in.jsonl'
  rows.write_text(''.join(json.dumps({'id': f's{i}', 'input': f'Sam has {i} pens.\nHow many?',
                                      'label': f'( {i}.0 )'}) + '\n' for i in range(5)))
  config = generation.GenerationConfig(out_dir=str(tmp_path / 'out'), dataset='svamp',
                                       input_jsonl=str(rows), progress=False)
  manifest = generation.run(config, backend, base.SamplingConfig(max_tokens=MAX_TOKENS))
  records = list(schema.read_records(str(tmp_path / 'out' / 'train.tfrecord-*')))
  assert [r['id'] for r in records] == [f's{i}' for i in range(5)]
  expect_hash = vocab_lib.vocab_hash(seqio.ByteVocabulary(extra_ids=100))
  for r in records:
    ids, lps = schema.decode_topk(r)
    assert ids.shape == (len(r['teacher_target_ids']), K)
    assert r['teacher_target_ids'][-1] == local_t5.EOS_ID
    assert r['teacher_topk_field'] == 'llm_output'
    assert r['teacher_vocab_hash'] == expect_hash
    assert r['teacher_topk_id_dtype'] == 'uint16'
  c = manifest['counts']
  assert c['inputs'] == c['written'] == 5 and c['parsed'] + c['parse_failures'] == 5
  assert manifest['backend']['backend'] == 'local' and manifest['backend']['devices'] == 8
  assert manifest['completion_tokens'] == sum(len(r['teacher_target_ids']) for r in records)


def test_self_consistency_samples_differ(backend):
  prompts = [Prompt(id='a', text=_long_prompt(7))]
  (r,) = backend.generate_batch(prompts, base.SamplingConfig(
      max_tokens=MAX_TOKENS, num_samples=2, temperature=5.0), batch_index=3)
  assert len(r.completions) == 2
  a, b = (c.target_ids for c in r.completions)
  assert len(a) != len(b) or np.any(a != b)


def test_our_own_checkpoint_gives_the_same_generations(backend, teacher_dir, tmp_path):
  """A non-HF checkpoint (T5X layout, models.checkpoint_formats) + gin-style model_config."""
  from distill_sbs.models import checkpoint_formats  # pylint: disable=g-import-not-at-top
  _, params = models.load_hf_checkpoint(teacher_dir)
  checkpoint_formats.write_t5x_checkpoint(str(tmp_path / 'ckpt'), params, tensorstore_min_size=1 << 30)
  with pytest.raises(ValueError, match='model_config'):
    local_t5.LocalT5Backend(str(tmp_path / 'ckpt'))
  ours = local_t5.LocalT5Backend(str(tmp_path / 'ckpt'), model_config=CONFIG, batch_size=4,
                                 k=K, max_input_length=128)
  prompts = [Prompt(id='p', text=_long_prompt(11))]
  sampling = base.SamplingConfig(max_tokens=MAX_TOKENS)
  (a,) = ours.generate_batch(prompts, sampling)
  (b,) = backend.generate_batch(prompts, sampling)
  np.testing.assert_array_equal(a.completions[0].target_ids, b.completions[0].target_ids)
  np.testing.assert_allclose(a.completions[0].topk_logprobs, b.completions[0].topk_logprobs,
                             atol=1e-5)


def test_model_parallel_matches_data_parallel(backend, teacher_dir):
  mp = local_t5.LocalT5Backend(str(teacher_dir), batch_size=4, k=K, max_input_length=128,
                               model_parallel=2)
  assert dict(mp.mesh.shape) == {'data': 4, 'model': 2}
  kernel = mp.params['decoder']['layers_0']['mlp']['wi_0']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'model')
  prompts = [Prompt(id=str(i), text=_long_prompt(20 + i)) for i in range(2)]
  sampling = base.SamplingConfig(max_tokens=MAX_TOKENS)
  for a, b in zip(mp.generate_batch(prompts, sampling), backend.generate_batch(prompts, sampling)):
    np.testing.assert_array_equal(a.completions[0].target_ids, b.completions[0].target_ids)
    # Sharded reductions sum in another order; the x3-scaled random weights make
    # logits large, so log-probs agree to ~1e-3 relative (the ids exactly).
    np.testing.assert_allclose(a.completions[0].topk_logprobs, b.completions[0].topk_logprobs,
                               rtol=2e-3, atol=2e-3)


def test_target_topk_from_decoding_or_teacher_forced(backend):
  """A target whose tokens before its last are the generated ones takes the top-k
  the decoder collected; any other target (here: a different token, and one
  longer than the decode length) is scored teacher-forced."""
  rows, width, T = backend._rows(4), MAX_TOKENS + 1, MAX_TOKENS  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 200, (rows, T)).astype(np.int32)      # [rows, T] "generated"
  targets = np.zeros((rows, width), np.int32)
  targets[0, :5] = np.append(tokens[0, :4], local_t5.EOS_ID)      # generated prefix + EOS
  targets[1, :5] = np.append(tokens[1, :3], [7, local_t5.EOS_ID])  # differs at position 3
  targets[2, :width] = np.append(tokens[2], local_t5.EOS_ID)      # length limit: L = T + 1
  lengths = [5, 5, width]
  dec_ids = np.full((rows, T, K), -7, np.int32)                   # sentinels: from decoding
  dec_lps = np.full((rows, T, K), -7.0, np.float32)
  enc = np.zeros((rows, 16), np.int32)
  enc[:, :4] = [9, 8, 7, local_t5.EOS_ID]
  before = dict(backend.stats)
  ids, lps = backend._target_topk(backend._shard(enc), tokens, targets, lengths,  # pylint: disable=protected-access
                                  dec_ids, dec_lps)
  assert (ids[0, :5] == -7).all() and (lps[0, :5] == -7.0).all()
  forced_ids, forced_lps = models.topk_scores(backend.config, backend.params, enc, targets, K)
  for r in (1, 2):
    np.testing.assert_array_equal(ids[r], np.asarray(forced_ids)[r])
    np.testing.assert_allclose(lps[r], np.asarray(forced_lps)[r], atol=1e-3)  # bf16, sharded vs not
  assert backend.stats['topk_from_decoding'] - before['topk_from_decoding'] == 1
  assert backend.stats['topk_teacher_forced'] - before['topk_teacher_forced'] == 2
