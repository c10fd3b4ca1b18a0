"""PairedEncDecFeatureConverter rows (padded and packed) and the α objective of
`StepByStepLoss`, against hand-computed values."""
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from distill_sbs.data.feature_converters import PairedEncDecFeatureConverter
from distill_sbs.distill import losses

EXAMPLES = [
    {'inputs': [5, 6, 7, 1], 'targets': [9, 1],
     'rationale_inputs': [8, 6, 7, 1], 'rationale_targets': [3, 4, 5, 6, 1]},
    {'inputs': [5, 7, 1], 'targets': [10, 11, 1],
     'rationale_inputs': [8, 7, 1], 'rationale_targets': [12, 13, 14, 15, 16, 17, 1]},
]
LENGTHS = {'inputs': 5, 'targets': 6}


def _ds(examples):
  keys = examples[0].keys()
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in keys})


def _batch(examples=EXAMPLES, pack=False, lengths=LENGTHS):
  out = PairedEncDecFeatureConverter(pack=pack)(_ds(examples), lengths)
  rows = list(out.as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_rows_have_static_lengths():
  """T5X sizes the model from `element_spec`: rows are [inputs] / [targets] long."""
  for examples in (EXAMPLES, [{'inputs': [5, 1], 'targets': [9, 9, 1]}]):
    spec = PairedEncDecFeatureConverter()(_ds(examples), LENGTHS).element_spec
    assert {k: tuple(v.shape) for k, v in spec.items()} == {
        'encoder_input_tokens': (LENGTHS['inputs'],),
        'decoder_target_tokens': (LENGTHS['targets'],),
        'decoder_input_tokens': (LENGTHS['targets'],),
        'decoder_loss_weights': (LENGTHS['targets'],),
        'decoder_task_ids': (LENGTHS['targets'],)}


def test_rows_and_features():
  b = _batch()
  np.testing.assert_array_equal(b['encoder_input_tokens'], [
      [5, 6, 7, 1, 0], [8, 6, 7, 1, 0], [5, 7, 1, 0, 0], [8, 7, 1, 0, 0]])
  np.testing.assert_array_equal(b['decoder_target_tokens'], [
      [9, 1, 0, 0, 0, 0], [3, 4, 5, 6, 1, 0], [10, 11, 1, 0, 0, 0],
      [12, 13, 14, 15, 16, 17]])  # last rationale trimmed to 6
  np.testing.assert_array_equal(b['decoder_input_tokens'], [
      [0, 9, 1, 0, 0, 0], [0, 3, 4, 5, 6, 1], [0, 10, 11, 1, 0, 0],
      [0, 12, 13, 14, 15, 16]])
  np.testing.assert_array_equal(b['decoder_loss_weights'], [
      [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1] * 6])
  np.testing.assert_array_equal(b['decoder_task_ids'], [
      [0] * 6, [1, 1, 1, 1, 1, 0], [0] * 6, [1] * 6])


def test_packed_rows_by_hand():
  """Rows are packed best-fit; a row is emitted once no example seen so far
  fits (row 1's encoder is full; the last rationale leaves 1 decoder slot, less
  than the shortest target seen, 2) and the open rest at the end; task ids
  travel with their tokens."""
  b = _batch(pack=True, lengths={'inputs': 8, 'targets': 8})
  np.testing.assert_array_equal(b['decoder_target_tokens'], [
      [9, 1, 3, 4, 5, 6, 1, 0], [12, 13, 14, 15, 16, 17, 1, 0],
      [10, 11, 1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b['decoder_task_ids'], [
      [0, 0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b['decoder_segment_ids'], [
      [1, 1, 2, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b['decoder_positions'][0], [0, 1, 0, 1, 2, 3, 4, 0])
  np.testing.assert_array_equal(b['decoder_input_tokens'][0], [0, 9, 0, 3, 4, 5, 6, 0])
  np.testing.assert_array_equal(b['encoder_input_tokens'][0], [5, 6, 7, 1, 8, 6, 7, 1])
  np.testing.assert_array_equal(b['encoder_segment_ids'][0], [1, 1, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(b['decoder_loss_weights'],
                                (b['decoder_target_tokens'] > 0).astype(int))


def _hand_objective(b, logits, alpha):
  """α · mean CE over label tokens + (1−α) · mean CE over rationale tokens."""
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  tgt = b['decoder_target_tokens']
  ce = lse - np.take_along_axis(logits, tgt[..., None], -1)[..., 0]
  real = b['decoder_loss_weights'] > 0
  lab = ce[real & (b['decoder_task_ids'] == 0)]
  rat = ce[real & (b['decoder_task_ids'] == 1)]
  return alpha * lab.mean() + (1 - alpha) * rat.mean(), lab, rat


@pytest.mark.parametrize('alpha', [0.5, 0.2])
def test_loss_is_alpha_weighted_per_task_mean(alpha):
  b = _batch()
  rng = np.random.RandomState(0)
  logits = rng.normal(size=b['decoder_target_tokens'].shape + (20,)).astype(np.float32)
  loss, m = losses.StepByStepLoss(alpha=alpha, z_loss=0.0)(
      jnp.asarray(logits), {k: jnp.asarray(v) for k, v in b.items()})
  expected, lab, rat = _hand_objective(b, logits, alpha)
  assert len(lab) == 5 and len(rat) == 11  # 2 + 3 label, 5 + 6 rationale tokens
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(m['label_loss']) == pytest.approx(lab.mean(), rel=1e-5)
  assert float(m['rationale_loss']) == pytest.approx(rat.mean(), rel=1e-5)
  assert (float(m['label_tokens']), float(m['rationale_tokens'])) == (5.0, 11.0)


def test_one_task_batch_gives_that_tasks_mean():
  """A label task at evaluation (no rationale rows): the plain label mean."""
  ex = [{'inputs': [5, 1], 'targets': [9, 9, 1]}, {'inputs': [6, 1], 'targets': [4, 1]}]
  b = _batch(ex)
  np.testing.assert_array_equal(b['decoder_task_ids'], 0)
  logits = np.random.RandomState(1).normal(size=(2, 6, 20)).astype(np.float32)
  loss, _ = losses.StepByStepLoss(alpha=0.3, z_loss=0.0)(
      jnp.asarray(logits), {k: jnp.asarray(v) for k, v in b.items()})
  ce = losses.CrossEntropyLoss(z_loss=0.0)(jnp.asarray(logits),
                                           {k: jnp.asarray(v) for k, v in b.items()})[0]
  assert float(loss) == pytest.approx(float(ce), rel=1e-6)


def test_alpha_is_checked():
  with pytest.raises(ValueError, match=r'alpha=1.5 must be in \[0, 1\]'):
    losses.StepByStepLoss(alpha=1.5)
  with pytest.raises(ValueError, match='StepByStepLoss'):
    losses.CrossEntropyLoss(loss_normalizing_factor=losses.PER_TASK_TOKENS)(
        jnp.zeros((1, 2, 3)), {'decoder_target_tokens': jnp.ones((1, 2), jnp.int32)})
