"""Decoding with the key/value cache: equivalences between methods and scoring."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_sbs import models
from tests.models.helpers import random_params

CFG = models.T5Config(vocab_size=48, emb_dim=16, num_heads=2, head_dim=8,
                      num_encoder_layers=1, num_decoder_layers=2, mlp_dim=24,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16)
LEN = 8


@pytest.fixture(scope='module')
def setup():
  params = random_params(CFG, seed=3)
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, 48, (4, 7)).astype(np.int32)
  inputs[1, 4:] = 0
  inputs[3, 2:] = 0
  # Make EOS compete with the token greedy emits at [0, 2] so some rows end early.
  tokens, _ = models.generate(CFG, params, inputs, max_decode_length=LEN)
  kernel = params['decoder']['logits_dense']['kernel']
  kernel[:, 1] = 1.05 * kernel[:, int(tokens[0, 2])]
  greedy = models.generate(CFG, params, inputs, max_decode_length=LEN)
  return params, inputs, greedy


def test_greedy_pads_after_eos_and_scores_match(setup):
  params, inputs, (tokens, log_probs) = setup
  tokens = np.asarray(tokens)
  assert tokens.shape == (4, LEN) and tokens.dtype == np.int32
  ended = (tokens == 1).any(axis=1)
  assert ended.any()
  for row in tokens[ended]:
    eos = int(np.argmax(row == 1))
    assert (row[eos + 1:] == 0).all() and (row[:eos] > 0).all()
  token_logp = np.asarray(models.score(CFG, params, inputs, tokens))
  assert (token_logp[tokens == 0] == 0).all()
  np.testing.assert_allclose(token_logp.sum(-1), log_probs, atol=1e-5)


def test_kv_cache_steps_equal_full_recomputation(setup):
  """T5X's protocol: init the cache with a full-length decode=True call, then
  feed one token per step; the logits equal the teacher-forced ones."""
  params, inputs, (tokens, _) = setup
  targets = np.where(tokens > 0, tokens, 5)  # no padding: identical masks
  dec_in = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  model = models.Transformer(CFG)
  full = model.apply({'params': params}, inputs, dec_in, targets, enable_dropout=False)
  cache = model.init(jax.random.PRNGKey(0), jnp.ones(inputs.shape, jnp.int32),
                     jnp.ones(targets.shape, jnp.int32), jnp.ones(targets.shape, jnp.int32),
                     decode=True, enable_dropout=False)['cache']
  encoded = model.apply({'params': params}, inputs, enable_dropout=False,
                        method=model.encode)

  @jax.jit
  def step(cache, token):
    return model.apply({'params': params, 'cache': cache}, encoded, inputs, token, token,
                       enable_dropout=False, decode=True, max_decode_length=LEN,
                       mutable=['cache'], method=model.decode)

  for i in range(LEN):
    logits, new_vars = step(cache, dec_in[:, i:i + 1])
    cache = new_vars['cache']
    np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-4)
  index = cache['decoder']['layers_0']['self_attention']['cache_index']
  assert int(index) == LEN


def test_cache_survives_t5x_beam_expansion(setup):
  """T5X's beam search repeats every cache leaf but `cache_index` per beam
  (`decoding.cache_map` + `flat_batch_beam_expand`) after the init call."""
  params, inputs, (tokens, _) = setup
  beams = 2
  targets = np.where(tokens > 0, tokens, 5)
  dec_in = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  model = models.Transformer(CFG)
  cache = model.init(jax.random.PRNGKey(0), jnp.ones(inputs.shape, jnp.int32),
                     jnp.ones(targets.shape, jnp.int32), jnp.ones(targets.shape, jnp.int32),
                     decode=True, enable_dropout=False)['cache']
  expand = lambda x: jnp.repeat(x, beams, axis=0)
  cache = jax.tree_util.tree_map_with_path(
      lambda path, x: x if path[-1].key == 'cache_index' else expand(x), cache)
  flat_inputs = expand(inputs)
  encoded = expand(model.apply({'params': params}, inputs, enable_dropout=False,
                               method=model.encode))
  full = model.apply({'params': params}, inputs, dec_in, targets, enable_dropout=False)

  @jax.jit
  def step(cache, token):
    return model.apply({'params': params, 'cache': cache}, encoded, flat_inputs, token,
                       token, enable_dropout=False, decode=True, max_decode_length=LEN,
                       mutable=['cache'], method=model.decode)

  for i in range(3):
    logits, new_vars = step(cache, expand(dec_in[:, i:i + 1]))
    cache = new_vars['cache']
    np.testing.assert_allclose(logits[:, 0], expand(full[:, i]), atol=1e-4)


def test_sampling_limits(setup):
  params, inputs, (tokens, log_probs) = setup
  cold, cold_lp = models.generate(CFG, params, inputs, max_decode_length=LEN,
                                  method='sample', temperature=1e-6, seed=1)
  np.testing.assert_array_equal(cold, tokens)
  np.testing.assert_allclose(cold_lp, log_probs, atol=1e-5)
  top1, _ = models.generate(CFG, params, inputs, max_decode_length=LEN, method='sample',
                            topk=1, rng=jax.random.PRNGKey(7))
  np.testing.assert_array_equal(top1, tokens)
  many = np.repeat(inputs, 8, axis=0)
  hot, hot_lp = models.generate(CFG, params, many, max_decode_length=LEN, method='sample',
                                temperature=1.0, topk=3, seed=2)
  hot = np.asarray(hot)
  assert len({tuple(r) for r in hot}) > 4  # genuinely random
  ids, _ = models.topk_scores(CFG, params, many, hot, 3)
  real = hot > 0
  assert (np.asarray(ids)[real] == hot[real][:, None]).any(-1).all()  # within top-3
  np.testing.assert_allclose(np.asarray(models.score(CFG, params, many, hot)).sum(-1),
                             hot_lp, atol=1e-5)
  nucleus, _ = models.generate(CFG, params, many, max_decode_length=LEN, method='sample',
                               topp=1e-4, seed=3)
  np.testing.assert_array_equal(nucleus, np.repeat(tokens, 8, axis=0))


def test_beam_search(setup):
  params, inputs, (tokens, log_probs) = setup
  one, one_lp = models.generate(CFG, params, inputs, max_decode_length=LEN, method='beam',
                                num_beams=1, alpha=0.0)
  np.testing.assert_array_equal(one, tokens)
  np.testing.assert_allclose(one_lp, log_probs, atol=1e-5)
  beams, beam_lp = models.generate(CFG, params, inputs, max_decode_length=LEN,
                                   method='beam', num_beams=4, alpha=0.6,
                                   return_all_beams=True)
  beams, beam_lp = np.asarray(beams), np.asarray(beam_lp)
  assert beams.shape == (4, 4, LEN) and beam_lp.shape == (4, 4)
  flat = beams.reshape(16, LEN)
  scored = np.asarray(models.score(CFG, params, np.repeat(inputs, 4, axis=0), flat))
  np.testing.assert_allclose(scored.sum(-1).reshape(4, 4), beam_lp, atol=1e-4)
  lengths = np.where((beams == 1).any(-1), np.argmax(beams == 1, axis=-1) + 1, LEN)
  penalised = beam_lp / ((5.0 + lengths) / 6.0) ** 0.6
  finished = (beams == 1).any(-1)
  for b in range(4):  # finished beams first, each group best first
    f = penalised[b][finished[b]]
    assert (np.diff(f) <= 1e-5).all()
    assert finished[b][:finished[b].sum()].all()
  best, best_lp = models.generate(CFG, params, inputs, max_decode_length=LEN,
                                  method='beam', num_beams=4, alpha=0.6)
  np.testing.assert_array_equal(best, beams[:, 0])
  # Four beams find a sequence at least as likely as greedy when both finished.
  both = finished[:, 0] & (tokens == 1).any(-1)
  assert (beam_lp[both, 0] / ((5.0 + lengths[both, 0]) / 6.0) ** 0.6 >=
          np.asarray(log_probs)[both] / ((5.0 + np.argmax(tokens[both] == 1, -1) + 1) / 6.0)
          ** 0.6 - 1e-5).all()


def test_topk_scores_are_log_softmax(setup):
  params, inputs, (tokens, _) = setup
  ids, lps = models.topk_scores(CFG, params, inputs, tokens, 5)
  ids, lps = np.asarray(ids), np.asarray(lps)
  assert ids.shape == (4, LEN, 5) and ids.dtype == np.int32
  dec_in = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
  logits = np.asarray(models.Transformer(CFG).apply(
      {'params': params}, inputs, dec_in, tokens, enable_dropout=False), np.float64)
  full = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                              keepdims=True))
  full -= logits.max(-1, keepdims=True)
  real = tokens > 0
  ref_ids = np.argsort(-full, axis=-1)[..., :5]
  np.testing.assert_array_equal(ids[real], ref_ids[real])
  np.testing.assert_allclose(lps[real], np.take_along_axis(full, ref_ids, -1)[real],
                             atol=1e-5)
  assert (ids[~real] == 0).all() and (lps[~real] == 0).all()
  # Greedy tokens are the top-1 of teacher forcing on their own output.
  np.testing.assert_array_equal(ids[real][:, 0], tokens[real])


def test_bad_arguments():
  params = random_params(CFG)
  with pytest.raises(ValueError, match='method'):
    models.generate(CFG, params, np.ones((1, 3), np.int32), max_decode_length=2,
                    method='nucleus')
  with pytest.raises(ValueError, match='encoder_input_tokens'):
    models.generate(CFG, params, np.ones((3,), np.int32), max_decode_length=2)


@pytest.mark.parametrize('method', ['greedy', 'sample'])
def test_topk_collected_while_decoding_equals_teacher_forced(method):
  """`generate(return_topk=k)` gives, at every generated position, what
  `topk_scores` gives teacher-forced on the generated tokens."""
  cfg = models.T5Config(vocab_size=40, emb_dim=16, num_heads=2, num_encoder_layers=2,
                        num_decoder_layers=2, head_dim=8, mlp_dim=32, dtype='float32')
  x = jnp.asarray(np.random.default_rng(0).integers(2, 40, (4, 7)), jnp.int32)
  params = models.Transformer(cfg).init(jax.random.PRNGKey(1), x, x, x,
                                        enable_dropout=False)['params']
  tokens, _, ids, lps = models.generate(cfg, params, x, max_decode_length=9, method=method,
                                        temperature=1.5, seed=3, return_topk=5)
  want_ids, want_lps = models.topk_scores(cfg, params, x, np.asarray(tokens), 5)
  # Positions before a row's first 0 (after EOS, or a generated PAD, which the
  # teacher-forced pass treats as padding from there on).
  real = np.cumprod(np.asarray(tokens) > 0, axis=1).astype(bool)
  assert real.sum() > 20
  np.testing.assert_array_equal(np.asarray(ids)[real], np.asarray(want_ids)[real])
  np.testing.assert_allclose(np.asarray(lps)[real], np.asarray(want_lps)[real], atol=1e-5)
  assert (np.asarray(lps)[real] < 0).all()
