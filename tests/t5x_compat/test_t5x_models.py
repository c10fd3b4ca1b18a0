"""T5X adapter: loss parity with the project's losses, T5X train state, converters.

Runs only where T5X is importable (it is not on the package registry; CI has
none). The loss math itself is the project's and is covered by tests/distill.
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
from t5x import adafactor  # noqa: E402
from t5x import train_state as t5x_train_state  # noqa: E402

from distill_sbs import t5x_compat  # noqa: E402
from distill_sbs.distill import losses  # noqa: E402
from distill_sbs.models import T5Config, Transformer  # noqa: E402

VOCAB = 64
CFG = T5Config(vocab_size=VOCAB, emb_dim=16, num_heads=2, num_encoder_layers=1,
               num_decoder_layers=1, head_dim=8, mlp_dim=32)
ALPHA = 0.3


def _optimizer():
  return adafactor.Adafactor(decay_rate=0.8, step_offset=0,
                             logical_factor_rules=adafactor.standard_logical_factor_rules())


def _paired_batch(lengths=(10, 8)):
  """Two examples through the real PairedFeatureConverter -> 4 rows."""
  rng = np.random.RandomState(0)

  def ex(n_in, n_lab, n_rat):
    return {'inputs': rng.randint(2, VOCAB, n_in).astype(np.int32),
            'targets': rng.randint(2, VOCAB, n_lab).astype(np.int32),
            'rationale_inputs': rng.randint(2, VOCAB, n_in + 1).astype(np.int32),
            'rationale_targets': rng.randint(2, VOCAB, n_rat).astype(np.int32)}
  exs = [ex(6, 2, 7), ex(9, 3, 5)]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(exs), output_signature={
          k: tf.TensorSpec([None], tf.int32) for k in exs[0]})
  conv = t5x_compat.PairedFeatureConverter(pack=False)
  out = conv(ds, {'inputs': lengths[0], 'targets': lengths[1]})
  for k, spec in out.element_spec.items():
    assert spec.shape.is_fully_defined(), (k, spec)  # T5X sizes the model from it
  rows = list(out.as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _model(cls=t5x_compat.SbsEncoderDecoderModel, **kwargs):
  vocab = seqio.PassThroughVocabulary(VOCAB)
  return cls(Transformer(CFG), vocab, vocab, _optimizer(), **kwargs)


def _shapes(batch):
  return {k: v.shape for k, v in batch.items()}


def test_paired_converter_rows():
  b = _paired_batch()
  assert b['encoder_input_tokens'].shape == (4, 10)
  np.testing.assert_array_equal(b['decoder_task_ids'][:, 0], [0, 1, 0, 1])
  real = b['decoder_target_tokens'] > 0
  np.testing.assert_array_equal(b['decoder_loss_weights'], real)  # 0/1: α is the loss's
  assert t5x_compat.PairedFeatureConverter(pack=True).pack  # T5X's default packs
  assert t5x_compat.TopKFeatureConverter(pack=True).pack


def test_sbs_loss_is_exact_alpha_objective():
  batch = _paired_batch()
  model = _model(loss_fn=losses.StepByStepLoss(alpha=ALPHA, z_loss=0.0))
  variables = model.get_initial_variables(jax.random.PRNGKey(0), _shapes(batch))
  params = variables['params']
  loss, metrics = model.loss_fn(params, batch, None)
  logits = np.asarray(model._compute_logits(params, batch), np.float64)  # pylint: disable=protected-access
  # Hand computation: α·mean CE over label tokens + (1−α)·mean CE over rationale tokens.
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  tgt = batch['decoder_target_tokens']
  ce = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
  real = tgt > 0
  lab = real & (batch['decoder_task_ids'] == 0)
  rat = real & (batch['decoder_task_ids'] == 1)
  expected = ALPHA * ce[lab].mean() + (1 - ALPHA) * ce[rat].mean()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['distill_sbs/label_loss'].compute()),
                             ce[lab].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['distill_sbs/rationale_loss'].compute()),
                             ce[rat].mean(), rtol=1e-5)
  # Same number as the project's own trainer loss.
  ref, _ = losses.StepByStepLoss(alpha=ALPHA, z_loss=0.0)(
      jnp.asarray(logits, jnp.float32), batch)
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)


def test_initial_variables_have_t5x_axes_and_train_state():
  batch = _paired_batch()
  model = _model()
  variables = model.get_initial_variables(jax.random.PRNGKey(0), _shapes(batch))
  assert set(variables) == {'params', 'params_axes'}
  axes = variables['params_axes']
  assert tuple(axes['token_embedder']['embedding_axes'].names) == ('vocab', 'embed')
  assert tuple(axes['encoder']['relpos_bias']['rel_embedding_axes'].names) == (
      'heads', 'relpos_buckets')
  # T5X's own train state accepts it (it validates every parameter has axes).
  state = t5x_train_state.FlaxOptimTrainState.create(_optimizer(), variables)
  assert int(state.step) == 0
  n = sum(x.size for x in jax.tree.leaves(state.params))
  assert n == sum(x.size for x in jax.tree.leaves(variables['params'])) > 0


def test_sbs_training_steps_reduce_loss():
  batch = _paired_batch()
  model = _model()
  params = model.get_initial_variables(jax.random.PRNGKey(1), _shapes(batch))['params']
  grad_fn = jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch, None)[0]))
  first, _ = grad_fn(params)
  for _ in range(15):
    loss, g = grad_fn(params)
    params = jax.tree.map(lambda p, d: p - 0.5 * d, params, g)
  assert float(loss) < float(first) - 0.5, (float(first), float(loss))


def test_t5x_decoding_runs_on_project_network():
  batch = _paired_batch()
  model = _model()
  params = model.get_initial_variables(jax.random.PRNGKey(0), _shapes(batch))['params']
  out = model.predict_batch(params, {'encoder_input_tokens': batch['encoder_input_tokens'],
                                     'decoder_input_tokens': batch['decoder_input_tokens']})
  assert out.shape == batch['decoder_target_tokens'].shape
  assert ((np.asarray(out) >= 0) & (np.asarray(out) < VOCAB)).all()


def test_first_loss_matches_topk_distill_loss():
  rng = np.random.RandomState(3)
  b, l, k = 2, 5, 3
  tgt = rng.randint(2, VOCAB, (b, l)).astype(np.int32)
  tgt[1, 3:] = 0
  ids = np.stack([np.stack([rng.choice(np.arange(2, VOCAB), k, replace=False)
                            for _ in range(l)]) for _ in range(b)]).astype(np.int32)
  lp = np.log(rng.dirichlet(np.ones(k + 1), (b, l))[..., :k]).astype(np.float32)
  batch = {'encoder_input_tokens': rng.randint(2, VOCAB, (b, 6)).astype(np.int32),
           'decoder_target_tokens': tgt,
           'decoder_input_tokens': np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
           'decoder_loss_weights': (tgt > 0).astype(np.float32),
           'decoder_topk_ids': ids, 'decoder_topk_logprobs': lp}
  loss_fn = losses.TopKDistillLoss(teacher_temperature=1.0, rest_bucket=True, z_loss=0.0)
  model = _model(t5x_compat.FirstEncoderDecoderModel, loss_fn=loss_fn,
                 teacher_temperature=2.5)
  assert model.project_loss_fn.teacher_temperature == 2.5
  params = model.get_initial_variables(jax.random.PRNGKey(0), _shapes(batch))['params']
  loss, metrics = model.loss_fn(params, batch, None)
  logits = model._compute_logits(params, batch)  # pylint: disable=protected-access
  ref, _ = losses.TopKDistillLoss(teacher_temperature=2.5, rest_bucket=True,
                                  z_loss=0.0)(logits, batch)
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  # Independent check: masked mean of KL(q_T ‖ s) over real tokens.
  z = np.asarray(logits, np.float64)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  s = np.take_along_axis(logp, ids, -1)
  s = np.concatenate([s, np.log1p(-np.exp(s).sum(-1, keepdims=True))], -1)
  t = np.concatenate([lp, np.log1p(-np.exp(lp.astype(np.float64)).sum(-1, keepdims=True))], -1)
  q = np.exp(t / 2.5) / np.exp(t / 2.5).sum(-1, keepdims=True)
  kl = (q * (np.log(q) - s)).sum(-1)
  np.testing.assert_allclose(float(loss), kl[tgt > 0].mean(), rtol=1e-4)
  assert 'accuracy' in metrics
  with pytest.raises(ValueError, match='teacher_temperature must be > 0'):
    _model(t5x_compat.FirstEncoderDecoderModel, teacher_temperature=0.0)
