"""UL2 denoisers: rates, spans, reconstruction, lengths and mixture proportions."""
import numpy as np
import pytest
import scipy.stats
import seqio
import tensorflow as tf

from distill_sbs.data import denoisers as dn
from distill_sbs.data import ul2

VOCAB = seqio.ByteVocabulary(extra_ids=100)  # vocab_size 359, sentinels 358..259
FEATURES = {'inputs': seqio.Feature(VOCAB, add_eos=True),
            'targets': seqio.Feature(VOCAB, add_eos=True)}
NUM_EXAMPLES = 2000
# Raw lengths giving ~8+ spans per example so that T5's rounding of the span
# count stays well inside the 10% tolerance.
SPAN_CASES = [(3.0, 0.15, 160), (8.0, 0.15, 400), (3.0, 0.5, 48), (8.0, 0.5, 128),
              (64.0, 0.15, 3400), (64.0, 0.5, 1024)]


def _random_tokens(n, seed):
  # Byte ids 3..258: never a sentinel of the 359-id vocabulary.
  return tf.random.stateless_uniform([n], seed=seed, minval=3, maxval=259,
                                     dtype=tf.int32)


def _corrupt_many(mean_span, density, max_len, vocab_size=359):
  """NUM_EXAMPLES corrupted sequences of lengths in [max_len/2, max_len]."""
  def fn(i):
    seed = tf.stack([tf.cast(i, tf.int64), tf.constant(7, tf.int64)])
    n = max_len // 2 + tf.cast(i, tf.int32) % (max_len // 2 + 1)
    toks = _random_tokens(n, seed)
    out = ul2.span_corruption(toks, noise_density=density,
                              mean_noise_span_length=mean_span,
                              vocab_size=vocab_size, seed=seed + 1)
    return toks, out['inputs'], out['targets']
  ds = tf.data.Dataset.range(NUM_EXAMPLES).map(fn, num_parallel_calls=2)
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize('mean_span,density,max_len', SPAN_CASES)
def test_span_corruption_rate_mean_span_and_reconstruction(mean_span, density,
                                                           max_len):
  rows = _corrupt_many(mean_span, density, max_len)
  total = noise = spans = 0
  for toks, inputs, targets in rows:
    sentinels = targets >= 259
    n_spans = int(sentinels.sum())
    # Sentinels descend from vocab_size - 1 in both halves, in order.
    expected = 358 - np.arange(n_spans)
    np.testing.assert_array_equal(targets[sentinels], expected)
    np.testing.assert_array_equal(inputs[inputs >= 259], expected)
    assert targets[0] == 358  # targets start with <extra_id_0>
    np.testing.assert_array_equal(dn.merge_spans(inputs, targets, 359, 100), toks)
    total += len(toks)
    noise += len(targets) - n_spans
    spans += n_spans
  rate, mean = noise / total, noise / spans
  assert abs(rate - density) <= 0.1 * density, rate
  assert abs(mean - mean_span) <= 0.1 * mean_span, mean


def test_span_corruption_t5_sentinels_eager_equals_tf_data():
  toks = tf.range(100, 400, dtype=tf.int32)
  eager = ul2.span_corruption(toks, noise_density=0.15, mean_noise_span_length=3.0,
                              vocab_size=32100, seed=5)
  assert eager['targets'][0] == 32099  # <extra_id_0>
  assert set(eager['inputs'].numpy()[eager['inputs'].numpy() >= 32000]) == set(
      32099 - np.arange(int(np.sum(eager['targets'].numpy() >= 32000))))
  in_graph = next(iter(tf.data.Dataset.from_tensors(toks).map(
      lambda t: ul2.span_corruption(t, noise_density=0.15,
                                    mean_noise_span_length=3.0,
                                    vocab_size=32100, seed=5))))
  for k in ('inputs', 'targets'):
    np.testing.assert_array_equal(eager[k], in_graph[k])
  other = ul2.span_corruption(toks, noise_density=0.15, mean_noise_span_length=3.0,
                              vocab_size=32100, seed=6)
  assert not np.array_equal(other['inputs'], eager['inputs'])
  # 300 tokens: round(45) noise tokens in round(45 / 3) = 15 spans.
  assert len(eager['targets']) == 45 + 15
  assert len(eager['inputs']) == 300 - 45 + 15


@pytest.mark.parametrize('mean_span,density', [(3.0, 0.15), (8.0, 0.5), (64.0, 0.15)])
def test_length_formula_matches_op(mean_span, density):
  """`corrupted_lengths` (used for budgets) is exact for every raw length."""
  def fn(n):
    out = ul2.span_corruption(tf.ones([n], tf.int32), noise_density=density,
                              mean_noise_span_length=mean_span, vocab_size=359,
                              seed=[n, 1], max_spans=100)
    return n, tf.size(out['inputs']), tf.size(out['targets'])
  ds = tf.data.Dataset.range(2, 400).map(lambda n: fn(tf.cast(n, tf.int32)))
  for n, i, t in ds.as_numpy_iterator():
    assert (i, t) == dn.corrupted_lengths(int(n), density, mean_span, 100), n


def test_prefix_lm_reconstructs_and_respects_budgets():
  def fn(i):
    n = 2 + tf.cast(i, tf.int32) % 89  # up to 90 = 50 + 40
    toks = _random_tokens(n, [i, 3])
    out = ul2.prefix_lm(toks, seed=[i, 4], max_inputs_length=50,
                        max_targets_length=40)
    return toks, out['inputs'], out['targets']
  ds = tf.data.Dataset.range(NUM_EXAMPLES).map(fn, num_parallel_calls=2)
  splits = []
  for toks, inputs, targets in ds.as_numpy_iterator():
    np.testing.assert_array_equal(np.concatenate([inputs, targets]), toks)
    assert 1 <= len(inputs) <= 50 and 1 <= len(targets) <= 40
    splits.append(len(inputs) / len(toks))
  # Random split points: spread over the sequence, not a fixed fraction.
  assert np.std(splits) > 0.15


def _documents(num, max_len, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, 259, size=rng.integers(1, max_len)).astype(np.int32)
          for _ in range(num)]


def _as_dataset(docs):
  return tf.data.Dataset.from_generator(
      lambda: ({'targets': d} for d in docs),
      output_signature={'targets': tf.TensorSpec([None], tf.int32)})


@pytest.mark.parametrize('lengths', [{'inputs': 64, 'targets': 64},
                                     {'inputs': 96, 'targets': 24},
                                     {'inputs': 24, 'targets': 80}])
def test_mixture_lengths_mode_tokens_and_reconstruction(lengths):
  docs = _documents(60, 300)
  out = seqio.preprocessors.append_eos_after_trim(
      ul2.mixture_of_denoisers(_as_dataset(docs), lengths, FEATURES, seed=1,
                               emit_denoiser_id=True),
      output_features=FEATURES, sequence_length=lengths)
  mode_ids = {m: VOCAB.encode(m) for m in ul2.MODE_TOKENS}
  chunks = []
  seen = set()
  for ex in out.as_numpy_iterator():
    d = ul2.UL2_DENOISERS[ex['denoiser_id']]
    seen.add(d.name)
    assert len(ex['inputs']) <= lengths['inputs']
    assert len(ex['targets']) <= lengths['targets']
    assert ex['inputs'][-1] == 1 and ex['targets'][-1] == 1  # EOS kept, no trim
    inputs, targets = ex['inputs'][:-1], ex['targets'][:-1]
    mode = mode_ids[d.mode]
    np.testing.assert_array_equal(inputs[:len(mode)], mode)
    body = inputs[len(mode):]
    if d.prefix_lm:
      chunks.append(np.concatenate([body, targets]))
    else:
      chunks.append(dn.merge_spans(body, targets, 359, 100))
  assert seen == {d.name for d in ul2.UL2_DENOISERS}
  # Chunks are the documents in order: nothing lost, nothing reordered.
  np.testing.assert_array_equal(np.concatenate(chunks), np.concatenate(docs))


def _mixture_ids(denoisers, num, seed):
  docs = [np.full([20], 7, np.int32)] * num
  out = ul2.mixture_of_denoisers(_as_dataset(docs), {'inputs': 32, 'targets': 32},
                                 FEATURES, denoisers=denoisers, seed=seed,
                                 emit_denoiser_id=True)
  return out.map(lambda ex: ex['denoiser_id'])


def _denoiser_counts(denoisers, num, seed):
  ids = np.asarray(list(_mixture_ids(denoisers, num, seed).as_numpy_iterator()))
  return np.bincount(ids, minlength=len(denoisers))


@pytest.mark.parametrize('preset', ['ul2', 'ul2r'])
def test_mixture_proportions_chi_square(preset):
  denoisers = ul2.get_denoisers(preset)
  counts = _denoiser_counts(denoisers, NUM_EXAMPLES, seed=0)
  rates = np.asarray([d.rate for d in denoisers])
  expected = rates / rates.sum() * counts.sum()
  _, p = scipy.stats.chisquare(counts, expected)
  assert p > 0.01, (counts, expected, p)


def test_mixture_draws_are_seeded():
  ids = _mixture_ids(ul2.UL2_DENOISERS, 100, 0)
  first = list(ids.as_numpy_iterator())
  assert first == list(ids.as_numpy_iterator())  # stateless: replays exactly
  assert first != list(_mixture_ids(ul2.UL2_DENOISERS, 100, 1).as_numpy_iterator())


def test_presets_and_configurable_rates():
  groups = lambda ds: {m: round(sum(d.rate for d in ds if d.mode == m), 6)
                       for m in ul2.MODE_TOKENS}
  assert groups(ul2.UL2_DENOISERS) == {'[NLU]': 0.4, '[NLG]': 0.4, '[S2S]': 0.2}
  assert groups(ul2.UL2R_DENOISERS) == {'[NLU]': 0.25, '[NLG]': 0.25, '[S2S]': 0.5}
  spans = sorted((d.mean_noise_span_length, d.noise_density)
                 for d in ul2.UL2_DENOISERS if not d.prefix_lm)
  assert spans == [(3.0, 0.15), (3.0, 0.5), (8.0, 0.15), (8.0, 0.5),
                   (64.0, 0.15), (64.0, 0.5)]
  assert groups(ul2.make_denoisers(r_rate=0.5, x_rate=0.0, s_rate=0.5)) == {
      '[NLU]': 0.5, '[NLG]': 0, '[S2S]': 0.5}
  with pytest.raises(ValueError, match='x_rate=-1'):
    ul2.make_denoisers(x_rate=-1)
  with pytest.raises(ValueError, match='unknown UL2 preset'):
    ul2.get_denoisers('t5')
  with pytest.raises(ValueError, match='noise_density'):
    ul2.span_corruption(tf.range(5), noise_density=1.5, mean_noise_span_length=3,
                        vocab_size=359, seed=0)


def test_seqio_seeded_path_is_deterministic():
  docs = _documents(20, 100, seed=3)

  def run(seed):
    with seqio.utils.map_seed_manager(seed):
      out = ul2.mixture_of_denoisers(_as_dataset(docs), {'inputs': 48, 'targets': 48},
                                     FEATURES, emit_denoiser_id=True)
    return list(out.as_numpy_iterator())
  a, b = run(10), run(10)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x['inputs'], y['inputs'])
  # Per-example seeds differ: more than one denoiser is drawn.
  assert len({int(x['denoiser_id']) for x in a}) > 1


def test_prepend_mode_token():
  ds = tf.data.Dataset.from_tensors({'inputs': tf.constant([5, 6], tf.int32)})
  out = next(iter(ul2.prepend_mode_token(ds, FEATURES, mode='[NLU]')))
  assert out['inputs'].numpy().tolist() == VOCAB.encode('[NLU]') + [5, 6]
  same = next(iter(ul2.prepend_mode_token(ds, FEATURES, mode=None)))
  assert same['inputs'].numpy().tolist() == [5, 6]


def test_bad_lengths_and_vocabularies_raise():
  ds = _as_dataset([np.arange(3, 30, dtype=np.int32)])
  with pytest.raises(ValueError, match='leaves no room after the mode token'):
    ul2.mixture_of_denoisers(ds, {'inputs': 6, 'targets': 8}, FEATURES, seed=0)
  with pytest.raises(ValueError, match='needs sequence_length'):
    ul2.mixture_of_denoisers(ds, None, FEATURES, seed=0)
  no_sentinels = seqio.ByteVocabulary(extra_ids=0)
  feats = {k: seqio.Feature(no_sentinels) for k in ('inputs', 'targets')}
  with pytest.raises(ValueError, match='no extra ids'):
    ul2.mixture_of_denoisers(ds, {'inputs': 32, 'targets': 32}, feats, seed=0)
