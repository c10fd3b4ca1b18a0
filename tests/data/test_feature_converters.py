"""PairedEncDecFeatureConverter: rows, weights and the exact α objective."""
import gin
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


def _batch(alpha, examples=EXAMPLES):
  out = PairedEncDecFeatureConverter(alpha=alpha)(_ds(examples), LENGTHS)
  rows = list(out.as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_rows_have_static_lengths():
  """T5X sizes the model from `element_spec`: rows are [inputs] / [targets] long."""
  for examples in (EXAMPLES, [{'inputs': [5, 1], 'targets': [9, 9, 1]}]):
    spec = PairedEncDecFeatureConverter(alpha=0.3)(_ds(examples), LENGTHS).element_spec
    assert {k: tuple(v.shape) for k, v in spec.items()} == {
        'encoder_input_tokens': (LENGTHS['inputs'],),
        'decoder_target_tokens': (LENGTHS['targets'],),
        'decoder_input_tokens': (LENGTHS['targets'],),
        'decoder_loss_weights': (LENGTHS['targets'],),
        'decoder_task_ids': (LENGTHS['targets'],)}


def test_rows_and_features():
  b = _batch(0.3)
  np.testing.assert_array_equal(b['encoder_input_tokens'], [
      [5, 6, 7, 1, 0], [8, 6, 7, 1, 0], [5, 7, 1, 0, 0], [8, 7, 1, 0, 0]])
  np.testing.assert_array_equal(b['decoder_target_tokens'], [
      [9, 1, 0, 0, 0, 0], [3, 4, 5, 6, 1, 0], [10, 11, 1, 0, 0, 0],
      [12, 13, 14, 15, 16, 17]])  # last rationale trimmed to 6
  np.testing.assert_array_equal(b['decoder_input_tokens'], [
      [0, 9, 1, 0, 0, 0], [0, 3, 4, 5, 6, 1], [0, 10, 11, 1, 0, 0],
      [0, 12, 13, 14, 15, 16]])
  np.testing.assert_allclose(b['decoder_loss_weights'], [
      [.3, .3, 0, 0, 0, 0], [.7, .7, .7, .7, .7, 0], [.3, .3, .3, 0, 0, 0],
      [.7] * 6], rtol=1e-6)
  np.testing.assert_array_equal(b['decoder_task_ids'], [[0] * 6, [1] * 6, [0] * 6,
                                                        [1] * 6])
  assert b['decoder_loss_weights'].dtype == np.float32
  assert b['decoder_task_ids'].dtype == np.int32


@pytest.mark.parametrize('alpha', [0.5, 0.2])
def test_loss_is_alpha_weighted_per_task_mean(alpha):
  b = _batch(alpha)
  rng = np.random.RandomState(0)
  logits = rng.normal(size=b['decoder_target_tokens'].shape + (20,)).astype(np.float32)
  loss_fn = losses.CrossEntropyLoss(z_loss=0.0,
                                    loss_normalizing_factor='PER_TASK_TOKENS')
  loss, _ = loss_fn(jnp.asarray(logits), {k: jnp.asarray(v) for k, v in b.items()})
  # Hand computation: token CE = logsumexp - logit[target], mean per task.
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  tgt = b['decoder_target_tokens']
  ce = lse - np.take_along_axis(logits, tgt[..., None], -1)[..., 0]
  label_ce = np.concatenate([ce[0, :2], ce[2, :3]])
  rationale_ce = np.concatenate([ce[1, :5], ce[3, :6]])
  expected = alpha * label_ce.mean() + (1 - alpha) * rationale_ce.mean()
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_alpha_from_gin_and_bad_settings():
  with gin.unlock_config():
    gin.parse_config('PairedEncDecFeatureConverter.alpha = 0.9')
  try:
    assert PairedEncDecFeatureConverter().alpha == 0.9
  finally:
    gin.clear_config()
  with pytest.raises(ValueError, match='does not pack'):
    PairedEncDecFeatureConverter(pack=True)
  with pytest.raises(ValueError, match=r'alpha must be in \[0, 1\]'):
    PairedEncDecFeatureConverter(alpha=1.5)


def test_unpaired_dataset_gives_one_label_row():
  ex = [{'inputs': [5, 1], 'targets': [9, 9, 1]}]
  out = list(PairedEncDecFeatureConverter(alpha=0.3)(_ds(ex), LENGTHS)
             .as_numpy_iterator())
  assert len(out) == 1
  np.testing.assert_allclose(out[0]['decoder_loss_weights'], [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(out[0]['decoder_task_ids'], [0] * 6)
