"""T5X decoder-only adapter: loss parity with the project's step-by-step loss on
the paired decoder-only converter's rows, T5X train state, decoding, scoring.

Runs only where T5X is importable (it is not on the package registry; CI has
none). The T5X-free half (`decoder_only_batches.py`) is tested in
test_t5x_configs.py without T5X.
"""
import numpy as np
import pytest

pytest.importorskip(
    't5x', reason='T5X is not installed (not on the package registry); see docs/t5x.md '
    'to run the T5X adapter tests in an environment with T5X')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402
import flax.core  # noqa: E402
from flax import traverse_util  # noqa: E402
from flax.core import meta  # noqa: E402
from t5x import adafactor  # noqa: E402
from t5x import train_state as t5x_train_state  # noqa: E402

from distill_sbs import models  # noqa: E402
from distill_sbs import t5x_compat  # noqa: E402
from distill_sbs.distill import losses  # noqa: E402

VOCAB = 64
CFG = models.DecoderOnlyConfig(model_type='qwen3', vocab_size=VOCAB, emb_dim=16,
                               num_heads=2, num_kv_heads=1, num_layers=1, head_dim=8,
                               mlp_dim=32, qk_norm=True, pad_id=0, eos_ids=(1,))
ALPHA = 0.3
LENGTHS = {'inputs': 10, 'targets': 8}


def _optimizer():
  return adafactor.Adafactor(decay_rate=0.8, step_offset=0,
                             logical_factor_rules=adafactor.standard_logical_factor_rules())


def _paired_batch(pack=False):
  """Two examples through T5X's view of the paired decoder-only converter."""
  rng = np.random.RandomState(0)

  def ex(n_in, n_lab, n_rat):
    return {'inputs': rng.randint(0, VOCAB, n_in).astype(np.int32),  # id 0 included
            'targets': np.append(rng.randint(2, VOCAB, n_lab - 1), 1).astype(np.int32),
            'rationale_inputs': rng.randint(0, VOCAB, n_in + 1).astype(np.int32),
            'rationale_targets': np.append(rng.randint(2, VOCAB, n_rat - 1), 1).astype(np.int32)}
  exs = [ex(6, 2, 7), ex(9, 3, 5)]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(exs), output_signature={k: tf.TensorSpec([None], tf.int32) for k in exs[0]})
  conv = t5x_compat.DecoderOnlyPairedFeatureConverter(pack=pack, use_custom_packing_ops=False)
  out = conv(ds, LENGTHS)
  for k, spec in out.element_spec.items():
    assert spec.shape.is_fully_defined(), (k, spec)  # T5X sizes the model from it
  rows = list(out.as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _model(**kwargs):
  return t5x_compat.SbsDecoderOnlyModel(models.DecoderOnlyTransformer(CFG),
                                        seqio.PassThroughVocabulary(VOCAB, eos_id=1),
                                        _optimizer(), **kwargs)


def _params(model, batch):
  shapes = {k: v.shape for k, v in batch.items()}
  return model.get_initial_variables(jax.random.PRNGKey(0), shapes)['params']


def test_sbs_loss_is_the_project_alpha_objective():
  batch = _paired_batch()
  assert batch['decoder_input_tokens'].shape == (4, sum(LENGTHS.values()))
  model = _model(loss_fn=losses.StepByStepLoss(alpha=ALPHA))
  params = _params(model, batch)
  loss, metrics = model.loss_fn(params, batch, None)
  logits = models.DecoderOnlyTransformer(CFG).apply(
      {'params': params}, batch['decoder_input_tokens'],
      decoder_segment_ids=batch['decoder_segment_ids'],
      decoder_positions=batch['decoder_positions'], enable_dropout=False)
  want, _ = losses.StepByStepLoss(alpha=ALPHA)(logits, batch)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  for name in ('label_loss', 'rationale_loss'):
    assert f'distill_sbs/{name}' in metrics
  # Packed rows give the same loss (per-task token means over the batch).
  packed = _paired_batch(pack=True)
  np.testing.assert_allclose(model.loss_fn(params, packed, None)[0], loss, rtol=1e-4)


def test_initial_variables_have_t5x_axes_and_train_state():
  batch = _paired_batch()
  model = _model()
  variables = model.get_initial_variables(jax.random.PRNGKey(0),
                                          {k: v.shape for k, v in batch.items()})
  assert set(variables) == {'params', 'params_axes'}
  state = t5x_train_state.FlaxOptimTrainState.create(model.optimizer_def, variables)
  assert state.step == 0
  plain = meta.unbox(models.DecoderOnlyTransformer(CFG).init(
      jax.random.PRNGKey(0), jnp.ones((4, 18), jnp.int32), enable_dropout=False)['params'])
  ours = traverse_util.flatten_dict(flax.core.unfreeze(variables['params']))
  assert set(ours) == set(traverse_util.flatten_dict(plain))
  axes = traverse_util.flatten_dict(flax.core.unfreeze(variables['params_axes']))
  assert tuple(axes[('decoder', 'token_embedder', 'embedding_axes')].names) == ('vocab', 'embed')


def test_predict_and_score_use_the_prompt_part():
  batch = _paired_batch()
  model = _model()
  params = _params(model, batch)
  tokens, aux = model.predict_batch_with_aux(params, batch)
  assert tokens.shape == (4, sum(LENGTHS.values())) and aux['scores'].shape == (4,)
  scores = np.asarray(model.score_batch(params, batch))
  assert scores.shape == (4,) and (scores < 0).all()
