"""Decoder-only converters: hand-built rows (label, paired, FIRST top-k,
prefix-LM), id 0 as a real token, the FIRST rows equal the encoder-decoder
converter's per target token, and packed == padded loss and gradients for every
objective through `DecoderOnlyModel.loss_fn`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from distill_sbs import models
from distill_sbs.data import decoder_only_converters as doc
from distill_sbs.data import feature_converters
from distill_sbs.data import topk
from distill_sbs.distill import losses
from distill_sbs.training import decoder_only_model
from distill_sbs.training import model as model_lib


def _ds(examples):
  sig = {k: tf.TensorSpec([None] + list(np.asarray(v).shape[1:]),
                          tf.float32 if np.asarray(v).dtype == np.float32 else tf.int32)
         for k, v in examples[0].items()}
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=sig)


def _rows(cls, examples, lengths, **kwargs):
  rows = list(cls(**kwargs)(_ds(examples), lengths).as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_label_rows_by_hand_and_id_zero_is_a_token():
  # Token 0 inside the inputs and the targets is real (HF vocabularies).
  ex = [{'inputs': [5, 0, 1], 'targets': [0, 9, 1]}, {'inputs': [7, 1], 'targets': [8, 1]}]
  b = _rows(doc.DecoderOnlyFeatureConverter, ex, {'inputs': 3, 'targets': 3}, pack=False)
  assert set(b) == {'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights',
                    'decoder_segment_ids', 'decoder_positions'}
  np.testing.assert_array_equal(b['decoder_input_tokens'], [[5, 0, 1, 0, 9, 0],
                                                            [7, 1, 8, 0, 0, 0]])
  np.testing.assert_array_equal(b['decoder_target_tokens'], [[0, 1, 0, 9, 1, 0],
                                                             [1, 8, 1, 0, 0, 0]])
  np.testing.assert_array_equal(b['decoder_loss_weights'], [[0, 0, 1, 1, 1, 0],
                                                            [0, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(b['decoder_segment_ids'], [[1, 1, 1, 1, 1, 0],
                                                           [1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(b['decoder_positions'], [[0, 1, 2, 3, 4, 0],
                                                         [0, 1, 2, 0, 0, 0]])
  # Metrics count the 0 tokens as real: slot efficiency by segment ids,
  # token accuracy by loss weights.
  eff = model_lib.slot_efficiency(b)
  assert set(eff) == {'decoder_slot_efficiency'}
  np.testing.assert_allclose(float(eff['decoder_slot_efficiency']), 8 / 12)
  logits = jax.nn.one_hot(b['decoder_target_tokens'], 16)
  acc = model_lib.token_accuracy_sums(logits, b)
  assert float(acc['real_tokens']) == 5 and float(acc['correct_tokens']) == 5


def test_prefix_lm_causal_attention():
  ex = [{'inputs': [5, 6, 1], 'targets': [9, 1]}, {'inputs': [7, 1], 'targets': [8, 4, 1]}]
  for cls, kw in ((doc.DecoderOnlyFeatureConverter, {'prefix_lm': True}),
                  (doc.DecoderOnlyPrefixLMFeatureConverter, {})):
    b = _rows(cls, ex, {'inputs': 3, 'targets': 3}, pack=False, **kw)
    # The input positions, the last predicting the first target.
    np.testing.assert_array_equal(b['decoder_causal_attention'], [[1, 1, 1, 0, 0, 0],
                                                                  [1, 1, 0, 0, 0, 0]])
  packed = _rows(doc.DecoderOnlyFeatureConverter, ex, {'inputs': 4, 'targets': 4},
                 pack=True, prefix_lm=True)
  np.testing.assert_array_equal(packed['decoder_segment_ids'],
                                [[1, 1, 1, 1, 2, 2, 2, 2]])
  np.testing.assert_array_equal(packed['decoder_causal_attention'],
                                [[1, 1, 1, 0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(packed['decoder_positions'], [[0, 1, 2, 3, 0, 1, 2, 3]])


def test_paired_rows_by_hand():
  ex = [{'inputs': [5, 6, 1], 'targets': [9, 1], 'rationale_inputs': [8, 6, 1],
         'rationale_targets': [3, 1]}]
  lengths = {'inputs': 4, 'targets': 4}
  b = _rows(doc.DecoderOnlyPairedFeatureConverter, ex, lengths, pack=False)
  np.testing.assert_array_equal(b['decoder_input_tokens'], [[5, 6, 1, 9, 0, 0, 0, 0],
                                                            [8, 6, 1, 3, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b['decoder_task_ids'], [[0] * 8, [0, 0, 1, 1, 0, 0, 0, 0]])
  p = _rows(doc.DecoderOnlyPairedFeatureConverter, ex, lengths, pack=True)
  np.testing.assert_array_equal(p['decoder_input_tokens'], [[5, 6, 1, 9, 8, 6, 1, 3]])
  np.testing.assert_array_equal(p['decoder_target_tokens'], [[6, 1, 9, 1, 6, 1, 3, 1]])
  np.testing.assert_array_equal(p['decoder_loss_weights'], [[0, 0, 1, 1, 0, 0, 1, 1]])
  np.testing.assert_array_equal(p['decoder_task_ids'], [[0, 0, 0, 0, 0, 0, 1, 1]])
  np.testing.assert_array_equal(p['decoder_segment_ids'], [[1, 1, 1, 1, 2, 2, 2, 2]])
  np.testing.assert_array_equal(p['decoder_positions'], [[0, 1, 2, 3, 0, 1, 2, 3]])
  # A label-only dataset (evaluation) gives label rows.
  label = _rows(doc.DecoderOnlyPairedFeatureConverter,
                [{'inputs': [5, 1], 'targets': [9, 1]}], lengths, pack=False)
  np.testing.assert_array_equal(label['decoder_task_ids'], [[0] * 8])


FIRST_EX = [{'inputs': np.array([5, 6, 1], np.int32), 'targets': np.array([9, 1], np.int32),
             'teacher_topk_ids': np.array([[9, 2], [1, 3]], np.int32),
             'teacher_topk_logprobs': np.array([[-0.1, -2.5], [-0.2, -3.0]], np.float32)},
            {'inputs': np.array([0, 1], np.int32), 'targets': np.array([4, 7, 1], np.int32),
             'teacher_topk_ids': np.array([[4, 0], [7, 5], [1, 2]], np.int32),
             'teacher_topk_logprobs': np.array([[-0.3, -1.5], [-0.4, -1.1], [0.0, -9.0]],
                                               np.float32)}]


def test_first_topk_rows_on_their_tokens():
  lengths = {'inputs': 3, 'targets': 3}
  b = _rows(doc.DecoderOnlyTopKFeatureConverter, FIRST_EX, lengths, pack=False)
  assert b['decoder_topk_ids'].shape == (2, 6, 2)
  np.testing.assert_array_equal(b['decoder_topk_ids'][0], [[0, 0], [0, 0], [9, 2], [1, 3],
                                                           [0, 0], [0, 0]])
  np.testing.assert_allclose(b['decoder_topk_logprobs'][0], [
      [0, 0], [0, 0], [-0.1, -2.5], [-0.2, -3.0], [0, 0], [0, 0]])
  # Exactly the encoder-decoder converter's rows, target token by target token.
  ed = _rows(topk.TopKFeatureConverter, FIRST_EX, lengths, pack=False)
  for r in range(2):
    w = b['decoder_loss_weights'][r] > 0
    n = int(w.sum())
    np.testing.assert_array_equal(b['decoder_target_tokens'][r][w],
                                  ed['decoder_target_tokens'][r][:n])
    for f in topk.TOPK_MODEL_FEATURES:
      np.testing.assert_array_equal(b[f][r][w], ed[f][r][:n])
      assert not b[f][r][~w].any()
  # Packed: the rows travel with their tokens (both examples in one row of 8).
  p = _rows(doc.DecoderOnlyTopKFeatureConverter, FIRST_EX, {'inputs': 4, 'targets': 4},
            pack=True)
  np.testing.assert_array_equal(p['decoder_segment_ids'], [[1, 1, 1, 1, 2, 2, 2, 2]])
  np.testing.assert_array_equal(p['decoder_topk_ids'][0], [
      [0, 0], [0, 0], [9, 2], [1, 3], [0, 0], [4, 0], [7, 5], [1, 2]])


def test_converter_for_maps_every_method_converter():
  assert doc.converter_for(None) is doc.DecoderOnlyFeatureConverter
  assert doc.converter_for(seqio.EncDecFeatureConverter) is doc.DecoderOnlyFeatureConverter
  assert (doc.converter_for(feature_converters.EncDecFeatureConverter)
          is doc.DecoderOnlyFeatureConverter)
  assert (doc.converter_for(feature_converters.PairedEncDecFeatureConverter)
          is doc.DecoderOnlyPairedFeatureConverter)
  assert doc.converter_for(topk.TopKFeatureConverter) is doc.DecoderOnlyTopKFeatureConverter
  assert (doc.converter_for(doc.DecoderOnlyPrefixLMFeatureConverter)
          is doc.DecoderOnlyPrefixLMFeatureConverter)
  with pytest.raises(ValueError, match='no decoder-only feature converter'):
    doc.converter_for(seqio.DecoderFeatureConverter)


# ----------------------------------------------------- packed == padded, per objective
VOCAB, K = 40, 4
CFG = models.DecoderOnlyConfig(model_type='qwen3', vocab_size=VOCAB, emb_dim=16, num_heads=2,
                               num_kv_heads=1, num_layers=1, head_dim=8, mlp_dim=32,
                               qk_norm=True)
LENGTHS = {'inputs': 10, 'targets': 10}


def _tokens(rng, n):
  # Ids from 0: the id 0 occurs as a real token.
  return np.concatenate([rng.integers(0, VOCAB, n - 1), [1]]).astype(np.int32)


def _examples(kind, n=6, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    ex = {'inputs': _tokens(rng, int(rng.integers(2, 8))),
          'targets': _tokens(rng, int(rng.integers(2, 6)))}
    if kind == 'paired':
      ex['rationale_inputs'] = _tokens(rng, int(rng.integers(2, 8)))
      ex['rationale_targets'] = _tokens(rng, int(rng.integers(3, 9)))
    if kind == 'first':
      L = len(ex['targets'])
      ids = np.stack([ex['targets']] + [rng.integers(0, VOCAB, L) for _ in range(K - 1)], 1)
      ex['teacher_topk_ids'] = ids.astype(np.int32)
      ex['teacher_topk_logprobs'] = np.log(
          rng.dirichlet(np.ones(K + 1), L)[:, :K]).astype(np.float32)
    out.append(ex)
  return out


OBJECTIVES = {
    'label': ('label', doc.DecoderOnlyFeatureConverter, losses.CrossEntropyLoss(z_loss=1e-4)),
    'prefix_lm': ('label', doc.DecoderOnlyPrefixLMFeatureConverter, losses.CrossEntropyLoss()),
    'paired_sbs': ('paired', doc.DecoderOnlyPairedFeatureConverter,
                   losses.StepByStepLoss(alpha=0.3)),
    'first': ('first', doc.DecoderOnlyTopKFeatureConverter,
              losses.TopKDistillLoss(kl_weight=0.7, teacher_temperature=1.5, rest_bucket=True)),
}


def _model(loss_fn):
  return decoder_only_model.DecoderOnlyModel(
      models.DecoderOnlyTransformer(CFG), None, None,
      __import__('optax').sgd(0.1), loss_fn=loss_fn)


@pytest.mark.parametrize('name', sorted(OBJECTIVES))
def test_packed_equals_padded(name):
  kind, cls, loss_fn = OBJECTIVES[name]
  examples = _examples(kind)
  padded = {k: jnp.asarray(v) for k, v in _rows(cls, examples, LENGTHS, pack=False).items()}
  packed = {k: jnp.asarray(v) for k, v in _rows(cls, examples, LENGTHS, pack=True).items()}
  assert packed['decoder_input_tokens'].shape[0] < padded['decoder_input_tokens'].shape[0]
  assert int(packed['decoder_segment_ids'].max()) > 1
  model = _model(loss_fn)
  params = jax.tree_util.tree_map(
      lambda v: v.unbox() if hasattr(v, 'unbox') else v,
      model.get_initial_variables(jax.random.PRNGKey(0), {'decoder_input_tokens': (1, 4)})[
          'params'], is_leaf=lambda v: hasattr(v, 'unbox'))
  grad = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b, None), has_aux=True))
  (loss_a, m_a), g_a = grad(params, padded)
  (loss_b, m_b), g_b = grad(params, packed)
  np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-5, atol=1e-6)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_a),
                          jax.tree_util.tree_leaves(g_b)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  assert float(m_a['real_tokens']) == float(m_b['real_tokens']) == sum(
      len(e['targets']) + len(e.get('rationale_targets', ())) for e in examples)
  assert float(m_b['decoder_slot_efficiency']) > float(m_a['decoder_slot_efficiency'])
  if name == 'paired_sbs':
    for key in ('label_loss', 'rationale_loss', 'label_tokens', 'rationale_tokens'):
      np.testing.assert_allclose(float(m_a[key]), float(m_b[key]), rtol=1e-5)
