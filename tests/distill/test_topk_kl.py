"""FIRST top-k KL: values and gradients against an independent NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_sbs.distill import losses


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_topk_kl(z, ids, lp, mask, tt, ts, rest):
  """NumPy float64 reference: (per-example KL [b], gradient wrt z [b, l, v])."""
  z, lp, mask = (np.asarray(a, np.float64) for a in (z, lp, mask))
  P = np.exp(_np_log_softmax(z / ts))  # [b, l, v]
  Pk = np.take_along_axis(P, ids, -1)  # [b, l, k]
  if rest:
    r = 1.0 - np.exp(lp).sum(-1, keepdims=True)
    tl = np.concatenate([lp, np.log(r)], -1) / tt
    q = np.exp(_np_log_softmax(tl))  # [b, l, k+1]
    s = np.concatenate([Pk, 1.0 - Pk.sum(-1, keepdims=True)], -1)
  else:
    q = np.exp(_np_log_softmax(lp / tt))
    s = Pk / Pk.sum(-1, keepdims=True)
  kl = (q * (np.log(q) - np.log(s))).sum(-1)  # [b, l]
  # Analytic gradient of KL wrt z (derived by hand, see losses.py notes).
  grad = np.zeros_like(z)
  b_idx, l_idx = np.indices(ids.shape[:2])
  if rest:
    # v in top-k: (P_v − q_i)/ts; v outside: P_v (1 − q_rest / s_rest)/ts.
    grad = P * (1.0 - q[..., -1:] / s[..., -1:])
    for j in range(ids.shape[-1]):
      grad[b_idx, l_idx, ids[..., j]] = P[b_idx, l_idx, ids[..., j]] - q[..., j]
  else:
    for j in range(ids.shape[-1]):
      grad[b_idx, l_idx, ids[..., j]] = s[..., j] - q[..., j]
  grad = grad / ts * mask[..., None]
  return (kl * mask).sum(-1), grad


def _random_case(rng, b=3, l=5, v=11, k=4, *, sharp=1.0):
  z = rng.normal(size=(b, l, v)) * 2.0
  ids = np.stack([np.stack([rng.choice(v, k, replace=False) for _ in range(l)])
                  for _ in range(b)])  # [b, l, k], distinct per position
  teacher = _np_log_softmax(rng.normal(size=(b, l, v)) * 2.0 * sharp)
  lp = np.take_along_axis(teacher, ids, -1)
  mask = (rng.uniform(size=(b, l)) > 0.3).astype(np.float64)
  mask[:, 0] = 1.0
  return z, ids, lp, mask


@pytest.mark.parametrize('rest', [False, True])
@pytest.mark.parametrize('tt,ts', [(1.0, 1.0), (2.5, 1.0), (0.7, 1.6)])
def test_topk_kl_matches_numpy_value_and_grad(rest, tt, ts):
  rng = np.random.default_rng(int(tt * 10 + ts * 100 + rest))
  z, ids, lp, mask = _random_case(rng)
  ref_val, ref_grad = np_topk_kl(z, ids, lp, mask, tt, ts, rest)
  with jax.enable_x64(True):
    fn = lambda zz: losses.topk_kl(zz, jnp.asarray(ids), jnp.asarray(lp), jnp.asarray(mask),
                                   teacher_temperature=tt, student_temperature=ts,
                                   rest_bucket=rest)
    val = fn(jnp.asarray(z))
    grad = jax.grad(lambda zz: fn(zz).sum())(jnp.asarray(z))
    assert val.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(val), ref_val, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), ref_grad, atol=1e-5, rtol=1e-5)
  # float32 (the training dtype) agrees too.
  val32 = losses.topk_kl(jnp.asarray(z, jnp.float32), jnp.asarray(ids),
                         jnp.asarray(lp, jnp.float32), jnp.asarray(mask, jnp.float32),
                         teacher_temperature=tt, student_temperature=ts, rest_bucket=rest)
  np.testing.assert_allclose(np.asarray(val32), ref_val, atol=1e-4, rtol=1e-4)


def test_full_vocab_k_equals_full_kl():
  rng = np.random.default_rng(0)
  b, l, v = 2, 4, 9
  z = rng.normal(size=(b, l, v))
  t = _np_log_softmax(rng.normal(size=(b, l, v)))
  ids = np.argsort(-t, -1)  # k = vocab, sorted
  lp = np.take_along_axis(t, ids, -1)
  mask = np.ones((b, l))
  s = _np_log_softmax(z)
  full = (np.exp(t) * (t - s)).sum(-1).sum(-1)
  with jax.enable_x64(True):
    got = losses.topk_kl(jnp.asarray(z), jnp.asarray(ids), jnp.asarray(lp), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got), full, atol=1e-10)


@pytest.mark.parametrize('tt,ts', [(1.0, 1.0), (3.0, 0.5)])
def test_rest_bucket_distributions_sum_to_one(tt, ts):
  rng = np.random.default_rng(1)
  z, ids, lp, _ = _random_case(rng, v=30, k=5)
  q = np.exp(np.asarray(losses.teacher_topk_log_probs(jnp.asarray(lp, jnp.float32),
                                                      temperature=tt, rest_bucket=True)))
  s = np.exp(np.asarray(losses.student_topk_log_probs(
      jnp.asarray(z, jnp.float32), jnp.asarray(ids), temperature=ts, rest_bucket=True)))
  assert q.shape[-1] == s.shape[-1] == 6
  np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-5)
  # At T = 1 the teacher's top-k entries are the stored probabilities themselves.
  q1 = np.exp(np.asarray(losses.teacher_topk_log_probs(jnp.asarray(lp, jnp.float32),
                                                       rest_bucket=True)))
  np.testing.assert_allclose(q1[..., :5], np.exp(lp), atol=1e-6)
  # Student entries are its full-vocabulary probabilities of the k ids.
  P = np.exp(_np_log_softmax(z / ts))
  np.testing.assert_allclose(s[..., :5], np.take_along_axis(P, ids, -1), atol=1e-6)


def test_padding_with_garbage_is_ignored_and_finite():
  rng = np.random.default_rng(2)
  z, ids, lp, mask = _random_case(rng)
  mask[:, -2:] = 0.0
  ids2, lp2 = ids.copy(), lp.copy()
  ids2[:, -2:] = 0       # duplicated ids on padding
  lp2[:, -2:] = 0.0      # "probability 1" for every entry on padding
  for rest in (False, True):
    f = lambda zz, i, p: losses.topk_kl(zz, jnp.asarray(i), jnp.asarray(p, jnp.float32),
                                        jnp.asarray(mask, jnp.float32), rest_bucket=rest)
    zz = jnp.asarray(z, jnp.float32)
    np.testing.assert_allclose(f(zz, ids2, lp2), f(zz, ids, lp), rtol=1e-6)
    g = jax.grad(lambda x: f(x, ids2, lp2).sum())(zz)
    assert np.isfinite(np.asarray(g)).all()
    assert np.all(np.asarray(g)[:, -2:] == 0)


def test_kl_zero_when_student_matches_teacher():
  rng = np.random.default_rng(3)
  t = _np_log_softmax(rng.normal(size=(2, 3, 7)) * 3)
  ids = np.argsort(-t, -1)[..., :3]
  lp = np.take_along_axis(t, ids, -1)
  out = losses.topk_kl(jnp.asarray(t, jnp.float32), jnp.asarray(ids), jnp.asarray(lp, jnp.float32),
                       jnp.ones((2, 3)), rest_bucket=True)
  np.testing.assert_allclose(out, 0.0, atol=1e-5)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match='topk_ids'):
    losses.topk_kl(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3, 2), jnp.int32),
                   jnp.zeros((2, 3, 3)), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match='mask'):
    losses.topk_kl(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3, 2), jnp.int32),
                   jnp.zeros((2, 3, 2)), jnp.ones((2, 4)))


def _batch(rng, b=2, l=6, v=13, k=3):
  z, ids, lp, mask = _random_case(rng, b, l, v, k)
  targets = np.where(mask > 0, ids[..., 0], 0).astype(np.int32)
  batch = {'decoder_target_tokens': jnp.asarray(targets),
           'decoder_loss_weights': jnp.asarray(mask, jnp.float32),
           'decoder_topk_ids': jnp.asarray(ids, jnp.int32),
           'decoder_topk_logprobs': jnp.asarray(lp, jnp.float32)}
  return jnp.asarray(z, jnp.float32), batch, mask


def test_distill_loss_mixes_kl_and_ce_with_normaliser():
  rng = np.random.default_rng(4)
  logits, batch, mask = _batch(rng)
  kl_sum = float(losses.topk_kl(logits, batch['decoder_topk_ids'], batch['decoder_topk_logprobs'],
                                batch['decoder_loss_weights'], teacher_temperature=2.0).sum())
  ce_sum, _, _ = losses.weighted_cross_entropy(logits, batch['decoder_target_tokens'],
                                               batch['decoder_loss_weights'])
  n = mask.sum()
  fn = losses.TopKDistillLoss(kl_weight=0.3, teacher_temperature=2.0, z_loss=0.0)
  loss, metrics = fn(logits, batch)
  np.testing.assert_allclose(float(metrics['kl']), kl_sum / n, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['cross_entropy']), float(ce_sum) / n, rtol=1e-5)
  np.testing.assert_allclose(float(loss), 0.3 * kl_sum / n + 0.7 * float(ce_sum) / n, rtol=1e-5)
  # kl_weight=0 with z-loss reduces to CrossEntropyLoss exactly.
  ce_loss, _ = losses.CrossEntropyLoss()(logits, batch)
  got, _ = losses.TopKDistillLoss(kl_weight=0.0)(logits, batch)
  np.testing.assert_allclose(float(got), float(ce_loss), rtol=1e-6)
  # loss_normalizing_factor=None gives plain sums.
  _, m = losses.TopKDistillLoss(teacher_temperature=2.0, loss_normalizing_factor=None)(logits, batch)
  np.testing.assert_allclose(float(m['kl']), kl_sum, rtol=1e-5)
  # Top-1 agreement: the student's argmax vs the teacher's highest stored id.
  teacher_top1 = np.take_along_axis(np.asarray(batch['decoder_topk_ids']),
                                    np.asarray(batch['decoder_topk_logprobs']).argmax(-1)[..., None],
                                    -1)[..., 0]
  agree = ((np.asarray(logits).argmax(-1) == teacher_top1) * (mask > 0)).sum() / n
  np.testing.assert_allclose(float(metrics['topk_top1_agreement']), agree, rtol=1e-6)


def test_distill_loss_errors():
  rng = np.random.default_rng(5)
  logits, batch, _ = _batch(rng)
  with pytest.raises(ValueError, match='StepByStepLoss'):  # the former normaliser
    losses.TopKDistillLoss(z_loss=0.0, loss_normalizing_factor=losses.PER_TASK_TOKENS)(
        logits, batch)
  fn = losses.TopKDistillLoss(z_loss=0.0)
  with pytest.raises(KeyError, match='decoder_topk_ids'):
    fn(logits, {'decoder_target_tokens': batch['decoder_target_tokens']})
  with pytest.raises(ValueError, match='kl_weight'):
    losses.TopKDistillLoss(kl_weight=1.5)
  with pytest.raises(ValueError, match='teacher_temperature'):
    losses.TopKDistillLoss(teacher_temperature=0.0)


def test_distill_loss_without_topk_falls_back_to_ce_only_when_asked():
  rng = np.random.default_rng(6)
  logits, batch, _ = _batch(rng)
  plain = {k: batch[k] for k in ('decoder_target_tokens', 'decoder_loss_weights')}
  want, _ = losses.CrossEntropyLoss()(logits, plain)
  got, m = losses.TopKDistillLoss(cross_entropy_without_topk=True)(logits, plain)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  with pytest.raises(KeyError, match='decoder_topk_ids'):
    losses.TopKDistillLoss()(logits, plain)


@pytest.mark.parametrize('rest', [False, True])
def test_absent_entries_are_ignored(rest):
  """A teacher with fewer than k alternatives pads with id 0 and log-prob −1e4:
  the result equals the KL over the real entries only."""
  rng = np.random.default_rng(7)
  z, ids, lp, mask = _random_case(rng, k=3)
  ids_pad = np.concatenate([ids, np.zeros(ids.shape[:2] + (2,), ids.dtype)], -1)
  lp_pad = np.concatenate([lp, np.full(lp.shape[:2] + (2,), -1e4)], -1)
  want, want_grad = np_topk_kl(z, ids, lp, mask, 1.5, 1.0, rest)
  with jax.enable_x64(True):
    f = lambda zz: losses.topk_kl(zz, jnp.asarray(ids_pad), jnp.asarray(lp_pad),
                                  jnp.asarray(mask), teacher_temperature=1.5, rest_bucket=rest)
    got = f(jnp.asarray(z))
    grad = jax.grad(lambda zz: f(zz).sum())(jnp.asarray(z))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), want_grad, atol=1e-5)


def test_uncarried_tokens_have_loss_weight_zero():
  """A real token whose top-k entries are all absent (a teacher distribution the
  cross-tokenizer carry could not place) counts for nothing: the loss equals
  the loss with that token's weight set to 0 (KL, CE and normaliser)."""
  rng = np.random.default_rng(7)
  logits, batch, mask = _batch(rng)
  i, j = map(int, np.argwhere(mask > 0)[1])
  lps = np.asarray(batch['decoder_topk_logprobs']).copy()
  lps[i, j] = losses.ABSENT_LOGPROB * 10  # the carry's -1e4
  absent = dict(batch, decoder_topk_logprobs=jnp.asarray(lps))
  zeroed_w = np.asarray(batch['decoder_loss_weights']).copy()
  zeroed_w[i, j] = 0.0
  zeroed = dict(batch, decoder_loss_weights=jnp.asarray(zeroed_w))
  fn = losses.TopKDistillLoss(kl_weight=0.4, teacher_temperature=1.5, rest_bucket=True)
  got, m = fn(logits, absent)
  want, _ = fn(logits, zeroed)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  assert float(m['uncarried_tokens']) == 1.0
