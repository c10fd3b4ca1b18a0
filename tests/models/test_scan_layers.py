"""`T5Config.scan_layers`: the scanned network computes exactly what the
per-layer one does, its checkpoints convert both ways, and its program does not
grow with depth."""
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from distill_sbs import models
from distill_sbs.models import checkpoint_formats
from distill_sbs.models import network

CFG = models.T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=3,
                      num_decoder_layers=2, head_dim=8, mlp_dim=32)


def _init(cfg):
  x = jnp.ones((2, 8), jnp.int32)
  return models.Transformer(cfg).init(jax.random.PRNGKey(0), x, x, x,
                                      enable_dropout=False)['params']


@pytest.fixture(scope='module')
def trees():
  params = meta.unbox(_init(CFG))
  return params, network.scan_layer_params(params)


def _batch():
  rng = np.random.default_rng(0)
  enc = jnp.asarray(rng.integers(2, 64, (2, 8)), jnp.int32).at[1, 5:].set(0)
  dec = jnp.asarray(rng.integers(2, 64, (2, 6)), jnp.int32).at[0, 4:].set(0)
  return enc, dec


def test_scanned_tree_matches_init_and_axes(trees):
  _, scanned = trees
  boxed = _init(CFG.replace(scan_layers=True))
  shapes = jax.tree.map(lambda x: x.shape, meta.unbox(boxed))
  assert jax.tree.map(lambda x: x.shape, scanned) == shapes
  kernel = boxed['encoder']['layers']['attention']['query']['kernel']
  assert kernel.names == ('layers', 'embed', 'joined_kv')
  assert kernel.value.shape == (3, 16, 16)
  assert 'layers_0' not in boxed['decoder']


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_forward_and_gradients_equal(trees, remat):
  params, scanned = trees
  enc, dec = _batch()

  def loss(cfg, p):
    logits = models.Transformer(cfg).apply({'params': p}, enc, dec, dec,
                                          enable_dropout=False)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), dec[..., None], -1)[..., 0]
    return -jnp.sum(logp * (dec > 0)), logits

  (l1, lg1), g1 = jax.value_and_grad(lambda p: loss(CFG.replace(remat_policy=remat), p),
                                     has_aux=True)(params)
  (l2, lg2), g2 = jax.value_and_grad(
      lambda p: loss(CFG.replace(scan_layers=True, remat_policy=remat), p),
      has_aux=True)(scanned)
  np.testing.assert_allclose(lg1, lg2, atol=1e-5)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  flat1 = jax.tree.leaves(network.scan_layer_params(g1))
  for a, b in zip(flat1, jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('method,options', [('greedy', {}), ('beam', {'num_beams': 3})])
def test_decoding_equal(trees, method, options):
  params, scanned = trees
  enc, _ = _batch()
  t1, lp1 = models.generate(CFG, params, enc, max_decode_length=6, method=method, **options)
  t2, lp2 = models.generate(CFG.replace(scan_layers=True), scanned, enc,
                            max_decode_length=6, method=method, **options)
  np.testing.assert_array_equal(t1, t2)
  np.testing.assert_allclose(lp1, lp2, atol=1e-5)


def test_checkpoints_convert_both_ways(trees):
  params, scanned = trees
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()),
                                   network.unscan_layer_params(scanned), params))
  # A per-layer checkpoint loads into a scanned model and vice versa.
  flat, loaded = checkpoint_formats.assign_params(scanned, params)
  assert len(loaded) == len(jax.tree.leaves(scanned))
  np.testing.assert_array_equal(flat['encoder/layers/mlp/wo/kernel'][2],
                                params['encoder']['layers_2']['mlp']['wo']['kernel'])
  flat, _ = checkpoint_formats.assign_params(params, scanned)
  np.testing.assert_array_equal(flat['decoder/layers_1/self_attention/out/kernel'],
                                scanned['decoder']['layers']['self_attention']['out'][
                                    'kernel'][1])
  # HF export of a scanned model writes per-layer blocks.
  with tempfile.TemporaryDirectory() as d:
    models.save_hf_checkpoint(d, CFG.replace(scan_layers=True), scanned)
    _, back = models.load_hf_checkpoint(d)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.allclose(a, b)), back, params))


def test_program_size_does_not_grow_with_depth():
  """The point of scanning: the lowered train-forward program of 8 layers is
  about as large as that of 2 (the per-layer one grows ~4×)."""
  def hlo_size(layers, scan):
    cfg = CFG.replace(num_encoder_layers=layers, num_decoder_layers=layers,
                      scan_layers=scan)
    x = jnp.ones((2, 8), jnp.int32)
    f = lambda r: models.Transformer(cfg).init(r, x, x, x, enable_dropout=False)
    params = jax.eval_shape(f, jax.random.PRNGKey(0))['params']
    apply = lambda p: models.Transformer(cfg).apply({'params': p}, x, x, x,
                                                    enable_dropout=False)
    return len(jax.jit(apply).lower(params).as_text())

  assert hlo_size(8, True) < 1.2 * hlo_size(2, True)
  assert hlo_size(8, False) > 2.5 * hlo_size(2, False)
