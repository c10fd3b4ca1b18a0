"""FIRST top-k records → SeqIO task → converter features; vocabulary check."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from distill_sbs.data import schema, topk
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.tasks import first

VOCAB = seqio.ByteVocabulary(extra_ids=100)
K = 3


def _records(rng, n, vocab_hash, *, lengths=(4, 9, 6)):
  recs = []
  for i in range(n):
    L = lengths[i % len(lengths)]
    ids = np.stack([rng.choice(np.arange(3, 300), K, replace=False) for _ in range(L)])
    lps = np.sort(np.log(rng.dirichlet(np.ones(K + 2), size=L))[:, :K], axis=1)[:, ::-1]
    tgt = np.concatenate([rng.integers(3, 300, L - 1), [1]])
    rec = {'id': f'r{i}', 'inputs': f'question {i}', 'label': f'gold{i}',
           'llm_output': 'x', 'teacher_target_ids': tgt, 'teacher_topk_field': 'llm_output',
           'teacher_vocab_hash': vocab_hash}
    rec.update(schema.encode_topk(ids, lps, VOCAB.vocab_size))
    recs.append(rec)
  return recs


def test_task_and_converter_align_topk_with_targets(tmp_path):
  rng = np.random.default_rng(0)
  recs = _records(rng, 6, vocab_lib.vocab_hash(VOCAB))
  recs.append({'id': 'no_topk', 'inputs': 'q', 'label': 'g'})  # skipped
  schema.write_shards(str(tmp_path), 'train', recs, num_shards=2)
  first.register_first_tasks('first_test_align', str(tmp_path), ds='cqa', vocabulary=VOCAB)
  ds = seqio.get_dataset('first_test_align', task_feature_lengths={'inputs': 16, 'targets': 7},
                         dataset_split='train', shuffle=False,
                         feature_converter=topk.TopKFeatureConverter())
  rows = list(ds.as_numpy_iterator())
  assert len(rows) == 6
  assert rows[0]['decoder_topk_ids'].shape == (7, K)
  assert rows[0]['decoder_topk_logprobs'].dtype == np.float32
  by_input = {VOCAB.decode(r['encoder_input_tokens'].tolist()): r for r in rows}
  for rec in recs[:6]:
    row = by_input[rec['inputs']]
    ids, lps = schema.decode_topk(rec)
    n = min(len(rec['teacher_target_ids']), 7)  # trimmed to the targets length
    np.testing.assert_array_equal(row['decoder_target_tokens'][:n], rec['teacher_target_ids'][:n])
    np.testing.assert_array_equal(row['decoder_topk_ids'][:n], ids[:n])
    np.testing.assert_array_equal(row['decoder_topk_logprobs'][:n], lps[:n])
    assert np.all(row['decoder_topk_ids'][n:] == 0) and np.all(row['decoder_topk_logprobs'][n:] == 0)
    np.testing.assert_array_equal(row['decoder_loss_weights'], np.arange(7) < n)
    np.testing.assert_array_equal(row['decoder_input_tokens'][1:n], row['decoder_target_tokens'][:n - 1])
    assert row['encoder_input_tokens'][len(rec['inputs'])] == VOCAB.eos_id


def test_mismatched_vocabulary_is_refused_naming_both(tmp_path):
  rng = np.random.default_rng(1)
  other = vocab_lib.vocab_hash(seqio.ByteVocabulary(extra_ids=0))
  schema.write_shards(str(tmp_path), 'train', _records(rng, 2, other))
  first.register_first_tasks('first_test_mismatch', str(tmp_path), vocabulary=VOCAB)
  with pytest.raises(topk.VocabularyMismatchError) as e:
    seqio.get_mixture_or_task('first_test_mismatch').get_dataset(
        {'inputs': 8, 'targets': 8}, split='train', shuffle=False)
  msg = str(e.value)
  assert other in msg and vocab_lib.vocab_hash(VOCAB) in msg
  with pytest.raises(topk.VocabularyMismatchError, match='no teacher_vocab_hash'):
    topk.check_vocab('', VOCAB, where='x')
  topk.check_vocab('', VOCAB, where='x', require_hash=False)


def test_compact_storage_bytes_per_token():
  rng = np.random.default_rng(2)
  recs = _records(rng, 3, 'h')
  # uint16 ids (2 B) + float16 log-probs (2 B) per entry: 4·k bytes per token.
  assert topk.bytes_per_target_token(recs)['topk_bytes_per_token'] == 4 * K
  big = schema.encode_topk(np.array([[70000, 1]]), np.zeros((1, 2)), 80000)
  assert big['teacher_topk_id_dtype'] == 'uint32' and len(big['teacher_topk_ids']) == 8


def test_converter_falls_back_for_plain_tasks_and_reads_temperature(tmp_path):
  import tensorflow as tf
  from distill_sbs.distill import temperature
  plain = tf.data.Dataset.from_tensors({'inputs': tf.constant([5, 6, 1], tf.int32),
                                        'targets': tf.constant([7, 1], tf.int32)})
  rows = list(topk.TopKFeatureConverter()(plain, {'inputs': 4, 'targets': 3}).as_numpy_iterator())
  assert set(rows[0]) == {'encoder_input_tokens', 'decoder_target_tokens',
                          'decoder_input_tokens', 'decoder_loss_weights'}
  np.testing.assert_array_equal(rows[0]['decoder_target_tokens'], [7, 1, 0])
  # The calibrated T of a FIRST task's records, through the task registry.
  schema.write_shards(str(tmp_path), 'train', _records(np.random.default_rng(3), 1, 'h'))
  first.register_first_tasks('first_test_temp', str(tmp_path), vocabulary=VOCAB)
  fit = temperature.TemperatureFit(1.7, 0, 0, 1, 0, 0, 0, 'drop')
  temperature.write_teacher_temperature(str(tmp_path), fit)
  assert topk.teacher_temperature(task='first_test_temp') == 1.7
  with pytest.raises(ValueError, match='not a FIRST'):
    topk.teacher_temperature(task='sbs_cqa_label_gold')


def test_first_plus_rationale_mixture_keeps_topk_and_one_hot_rationales(tmp_path):
  from distill_sbs.tasks import sbs
  rng = np.random.default_rng(4)
  schema.write_shards(str(tmp_path / 'topk'), 'train',
                      _records(rng, 4, vocab_lib.vocab_hash(VOCAB)))
  prepared = [{'id': f'r{i}', 'inputs': f'question {i}', 'label': f'gold{i}',
               'llm_label': f'gold{i}', 'rationale': f'because {i}'} for i in range(4)]
  schema.write_shards(str(tmp_path / 'prep'), 'train', prepared)
  first.register_first_tasks('first_test_mix_label', str(tmp_path / 'topk'), ds='cqa',
                             vocabulary=VOCAB, input_prefix=sbs.PREDICT_PREFIX)
  first.register_explain_task('first_test_mix_explain', 'cqa', vocabulary=VOCAB,
                              records_dir=str(tmp_path / 'prep'), k=K)
  seqio.MixtureRegistry.add('first_test_mix', [('first_test_mix_label', 1.0),
                                               ('first_test_mix_explain', 1.0)])
  ds = seqio.get_dataset('first_test_mix', {'inputs': 24, 'targets': 12}, dataset_split='train',
                         shuffle=False, feature_converter=topk.TopKFeatureConverter())
  rows = list(ds.take(8).as_numpy_iterator())
  kinds = {VOCAB.decode(r['encoder_input_tokens'].tolist()).split(':')[0] for r in rows}
  assert kinds == {'predict', 'explain'}
  for r in rows:
    if VOCAB.decode(r['encoder_input_tokens'].tolist()).startswith('explain'):
      n = int(r['decoder_loss_weights'].sum())
      assert VOCAB.decode(r['decoder_target_tokens'][:n].tolist()).startswith('because')
      np.testing.assert_array_equal(r['decoder_topk_ids'][:n, 0], r['decoder_target_tokens'][:n])
      np.testing.assert_array_equal(r['decoder_topk_logprobs'][:n, 0], 0.0)
      assert np.all(r['decoder_topk_logprobs'][:n, 1:] == -1e4)
    else:
      assert r['decoder_topk_logprobs'][0].max() < 0  # real teacher log-probs
  # With the rest bucket the one-hot KL equals the token cross-entropy.
  import jax.numpy as jnp
  from distill_sbs.distill import losses
  ex = [r for r in rows if VOCAB.decode(r['encoder_input_tokens'].tolist()).startswith('explain')][0]
  logits = jnp.asarray(np.random.default_rng(5).normal(size=(1, 12, VOCAB.vocab_size)), jnp.float32)
  batch = {k: jnp.asarray(v[None]) for k, v in ex.items()}
  _, m = losses.TopKDistillLoss(rest_bucket=True, z_loss=0.0)(logits, batch)
  np.testing.assert_allclose(float(m['kl']), float(m['cross_entropy']), rtol=1e-4)


def test_packed_topk_rows_sit_on_their_tokens():
  """Packing carries each token's k entries with it (expected rows by hand),
  including an id 0 and a log-prob of exactly 0 inside a row."""
  exs = [{'inputs': [5, 1], 'targets': [9, 1],
          'teacher_topk_ids': [[9, 0, 3], [1, 4, 5]],
          'teacher_topk_logprobs': [[0.0, -2, -3], [-0.2, -3, -4]]},
         {'inputs': [6, 7, 1], 'targets': [8, 7, 1],
          'teacher_topk_ids': [[8, 2, 3], [7, 4, 5], [1, 2, 3]],
          'teacher_topk_logprobs': [[-0.3, -2, -3], [-0.4, -3, -4], [-0.5, -1, -2]]}]
  sig = {'inputs': tf.TensorSpec([None], tf.int32), 'targets': tf.TensorSpec([None], tf.int32),
         'teacher_topk_ids': tf.TensorSpec([None, 3], tf.int32),
         'teacher_topk_logprobs': tf.TensorSpec([None, 3], tf.float32)}
  ds = tf.data.Dataset.from_generator(lambda: iter(exs), output_signature=sig)
  rows = list(topk.TopKFeatureConverter(pack=True)(ds, {'inputs': 6, 'targets': 6})
              .as_numpy_iterator())
  assert len(rows) == 1
  r = rows[0]
  np.testing.assert_array_equal(r['decoder_target_tokens'], [9, 1, 8, 7, 1, 0])
  np.testing.assert_array_equal(r['decoder_segment_ids'], [1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(r['decoder_topk_ids'], [
      [9, 0, 3], [1, 4, 5], [8, 2, 3], [7, 4, 5], [1, 2, 3], [0, 0, 0]])
  np.testing.assert_allclose(r['decoder_topk_logprobs'], [
      [0, -2, -3], [-0.2, -3, -4], [-0.3, -2, -3], [-0.4, -3, -4], [-0.5, -1, -2],
      [0, 0, 0]], rtol=1e-7)
