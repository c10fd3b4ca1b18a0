"""T5Config validation, parameter tree / logical axes, packing, remat, sharding."""
import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding

from distill_sbs import models
from distill_sbs.training import partitioning
from tests.models.helpers import random_params

TINY = models.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8,
                       num_encoder_layers=2, num_decoder_layers=2, mlp_dim=24,
                       relative_attention_num_buckets=8, relative_attention_max_distance=16)


def init_shapes(config):
  """Boxed variables (ShapeDtypeStructs with logical axis names), no compile."""
  x = jnp.ones((2, 9), jnp.int32)
  y = jnp.ones((2, 7), jnp.int32)
  return jax.eval_shape(lambda: models.Transformer(config).init(
      jax.random.PRNGKey(0), x, y, y, enable_dropout=False))


@functools.partial(jax.jit, static_argnames=('config',))
def logits(config, params, x, y_in, y, **kw):
  return models.Transformer(config).apply({'params': params}, x, y_in, y,
                                          enable_dropout=False, **kw)


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="'swiglu'"):
    models.T5Config(mlp_activations=('swiglu', 'linear'))
  with pytest.raises(ValueError, match='dtype'):
    models.T5Config(dtype='float8')
  with pytest.raises(ValueError, match='remat_policy'):
    models.T5Config(remat_policy='sometimes')
  cfg = models.T5Config(dtype=jnp.bfloat16, mlp_activations=['relu'])
  assert cfg.dtype == 'bfloat16' and cfg.activation_dtype == jnp.bfloat16
  assert cfg.mlp_activations == ('relu',)
  assert hash(cfg) == hash(models.T5Config(dtype='bfloat16', mlp_activations=('relu',)))


def test_gin_binds_t5config():
  gin.clear_config()
  try:
    gin.parse_config("""
        from __gin__ import dynamic_registration
        from distill_sbs import models
        models.Transformer.config = @models.T5Config()
        models.T5Config:
          vocab_size = 384
          emb_dim = 64
          num_heads = 4
          dtype = 'float32'
          mlp_activations = ('gelu', 'linear')
        MODULE = @models.Transformer()
    """)
    module = gin.query_parameter('%MODULE').scoped_configurable_fn()
    assert isinstance(module, models.Transformer)
    assert module.config.vocab_size == 384 and module.config.emb_dim == 64
    assert module.config.num_heads == 4
  finally:
    gin.clear_config()


def test_parameter_tree_and_axes_match_t5x():
  variables = init_shapes(TINY.replace(mlp_activations=('relu',), logits_via_embedding=True))
  flat = traverse_util.flatten_dict(variables['params'], sep='/')
  assert flat['token_embedder/embedding'].names == ('vocab', 'embed')
  assert flat['encoder/layers_1/attention/out/kernel'].names == ('joined_kv', 'embed')
  assert flat['encoder/layers_0/mlp/wi/kernel'].names == ('embed', 'mlp')
  assert flat['decoder/relpos_bias/rel_embedding'].names == ('heads', 'relpos_buckets')
  assert flat['decoder/layers_1/encoder_decoder_attention/query/kernel'].value.shape == (16, 16)
  assert 'decoder/logits_dense/kernel' not in flat
  untied = traverse_util.flatten_dict(init_shapes(TINY)['params'], sep='/')
  assert untied['decoder/logits_dense/kernel'].names == ('embed', 'vocab')
  assert 'encoder/layers_0/mlp/wi_1/kernel' in untied
  assert len(untied) == 1 + (1 + 2 * 9 + 1) + (1 + 2 * 14 + 1 + 1)  # 52 tensors
  assert all(v.value.dtype == jnp.float32 for v in untied.values())
  bf16 = traverse_util.flatten_dict(init_shapes(TINY.replace(dtype='bfloat16'))['params'])
  assert all(v.value.dtype == jnp.float32 for v in bf16.values())  # param_dtype


@pytest.mark.parametrize('dims', [(1, 1), (2, 2)])
def test_every_parameter_has_a_partition_spec(dims):
  rules = partitioning.standard_logical_axis_rules(*dims)
  known = {name for name, _ in rules}
  variables = init_shapes(TINY)
  specs = nn.get_partition_spec(variables)['params']
  leaves = jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(leaves) == 52
  for path, spec in leaves:
    assert len(spec) >= 1 and all(a in known for a in spec), (path, spec)
    mesh_axes = nn.logical_to_mesh_axes(spec, rules)
    assert all(a in (None, 'data', 'model') for a in mesh_axes), (path, mesh_axes)
  flat = {jax.tree_util.keystr(p): nn.logical_to_mesh_axes(s, rules) for p, s in leaves}
  key = "['encoder']['layers_0']['mlp']['wi_0']['kernel']"
  assert tuple(flat[key]) == ((None, 'model') if dims == (1, 1) else ('data', 'model'))


def test_sharded_params_give_same_logits_and_generation():
  devices = np.array(jax.devices()[:8]).reshape(2, 4)
  mesh = Mesh(devices, ('data', 'model'))
  rules = partitioning.standard_logical_axis_rules()
  cfg = TINY.replace(num_heads=4, mlp_dim=32)
  specs = nn.logical_to_mesh_sharding(nn.get_partition_spec(init_shapes(cfg)), mesh, rules)
  params = random_params(cfg)
  sharded = jax.device_put(params, specs['params'])
  assert sharded['decoder']['layers_0']['mlp']['wi_0']['kernel'].sharding.spec[1] == 'model'
  rng = np.random.default_rng(0)
  x = rng.integers(2, 64, (4, 9)).astype(np.int32)
  y = rng.integers(2, 64, (4, 7)).astype(np.int32)
  y_in = np.pad(y, ((0, 0), (1, 0)))[:, :-1]
  ref = logits(cfg, params, x, y_in, y)

  @jax.jit
  def fwd(p, x, y_in, y):
    with nn.logical_axis_rules(rules):
      return logits(cfg, p, x, y_in, y)

  with jax.set_mesh(mesh):
    out = fwd(sharded, x, y_in, y)
  np.testing.assert_allclose(out, ref, atol=1e-4)
  t1, l1 = models.generate(cfg, params, x, max_decode_length=6)
  t2, l2 = models.generate(cfg, sharded, x, max_decode_length=6)
  np.testing.assert_array_equal(t1, t2)
  np.testing.assert_allclose(l1, l2, atol=1e-4)


def test_packed_sequences_equal_separate_examples():
  params = random_params(TINY)
  a_x, a_y = np.array([[5, 6, 7, 1]]), np.array([[8, 9, 1]])
  b_x, b_y = np.array([[10, 11, 1]]), np.array([[12, 13, 14, 1]])
  shift = lambda t: np.pad(t, ((0, 0), (1, 0)))[:, :-1]
  sep_a = logits(TINY, params, a_x, shift(a_y), a_y)
  sep_b = logits(TINY, params, b_x, shift(b_y), b_y)
  x = np.concatenate([a_x, b_x, [[0]]], 1)  # [1, 8]
  y = np.concatenate([a_y, b_y, [[0]]], 1)  # [1, 8]
  y_in = np.concatenate([shift(a_y), shift(b_y), [[0]]], 1)
  seg_x = np.array([[1] * 4 + [2] * 3 + [0]])
  seg_y = np.array([[1] * 3 + [2] * 4 + [0]])
  pos_x = np.array([[0, 1, 2, 3, 0, 1, 2, 0]])
  pos_y = np.array([[0, 1, 2, 0, 1, 2, 3, 0]])
  packed = logits(TINY, params, x, y_in, y, encoder_segment_ids=seg_x,
                  decoder_segment_ids=seg_y, encoder_positions=pos_x,
                  decoder_positions=pos_y)
  np.testing.assert_allclose(packed[0, :3], sep_a[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 3:7], sep_b[0], atol=1e-5)


def test_remat_bf16_and_dropout():
  cfg = TINY.replace(num_encoder_layers=1, num_decoder_layers=1)
  params = random_params(cfg)
  rng = np.random.default_rng(1)
  x = rng.integers(1, 64, (2, 9)).astype(np.int32)
  y = rng.integers(1, 64, (2, 7)).astype(np.int32)
  y_in = np.pad(y, ((0, 0), (1, 0)))[:, :-1]

  @functools.partial(jax.jit, static_argnums=1)
  def grad(p, cfg):
    return jax.grad(lambda p: jnp.mean(logits(cfg, p, x, y_in, y) ** 2))(p)

  g0, g1 = grad(params, cfg), grad(params, cfg.replace(remat_policy='full'))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)
  ref = logits(cfg, params, x, y_in, y)
  bf16 = logits(cfg.replace(dtype='bfloat16'), params, x, y_in, y)
  assert bf16.dtype == jnp.float32  # logits stay float32
  assert np.abs(bf16 - ref).mean() < 0.05 * np.abs(ref).mean()
  m = models.Transformer(cfg.replace(dropout_rate=0.5))
  dropped = jax.jit(lambda p: m.apply({'params': p}, x, y_in, y, enable_dropout=True,
                                      rngs={'dropout': jax.random.PRNGKey(1)}))(params)
  assert np.abs(dropped - ref).max() > 1e-2


def test_jax_attention_kernel_gives_the_same_numbers():
  """attention_kernel='jax' (jax.nn.dot_product_attention, relative-position
  bias and masks as its bias) equals the einsum attention: logits of a packed
  batch, gradients, and greedy decoding with the cache."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  base = models.T5Config(vocab_size=50, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                         num_encoder_layers=2, num_decoder_layers=2, dtype='float32')
  fused = dataclasses.replace(base, attention_kernel='jax')
  rng = np.random.default_rng(0)
  enc = jnp.asarray(rng.integers(2, 50, (2, 12)), jnp.int32)
  tgt = jnp.asarray(rng.integers(2, 50, (2, 7)), jnp.int32)
  dec_in = jnp.pad(tgt, ((0, 0), (1, 0)))[:, :-1]
  seg_e = jnp.asarray([[1] * 5 + [2] * 7, [1] * 12], jnp.int32)
  seg_d = jnp.asarray([[1] * 3 + [2] * 4, [1] * 7], jnp.int32)
  params = models.Transformer(base).init(jax.random.PRNGKey(0), enc, dec_in, tgt,
                                         enable_dropout=False)['params']

  def logits(cfg, p):
    return models.Transformer(cfg).apply({'params': p}, enc, dec_in, tgt,
                                         encoder_segment_ids=seg_e, decoder_segment_ids=seg_d,
                                         enable_dropout=False)
  np.testing.assert_allclose(np.asarray(logits(fused, params)), np.asarray(logits(base, params)),
                             rtol=1e-5, atol=1e-5)
  grad = lambda cfg: jax.grad(lambda p: jnp.sum(jnp.sin(logits(cfg, p))))(params)
  for a, b in zip(jax.tree_util.tree_leaves(grad(fused)), jax.tree_util.tree_leaves(grad(base))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  tok_a, _ = models.generate(base, params, enc, max_decode_length=6)
  tok_b, _ = models.generate(fused, params, enc, max_decode_length=6)
  np.testing.assert_array_equal(np.asarray(tok_a), np.asarray(tok_b))


def test_broadcast_batch_gradient_sums_over_the_batch():
  """The relative-position bias is shared by the batch: its gradient is the sum
  of the per-row gradients (computed as a dot with ones, see layers)."""
  from distill_sbs.models import layers  # pylint: disable=g-import-not-at-top
  bias = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(1, 2, 3, 4)  # [1, h, q, k]
  w = jnp.arange(5 * 2 * 3 * 4, dtype=jnp.float32).reshape(5, 2, 3, 4) / 7.0
  out = layers.broadcast_batch(bias, 5)
  np.testing.assert_array_equal(out, np.broadcast_to(bias, (5, 2, 3, 4)))
  g = jax.grad(lambda b: jnp.sum(layers.broadcast_batch(b, 5) * w))(bias)
  np.testing.assert_allclose(g, np.asarray(w).sum(0, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize('dropout', [False, True])
def test_softmax_attention_matches_autodiff_of_softmax(dropout):
  """The einsum kernel's attention core (normalised on the output, its own
  FlashAttention-style gradient) against `jax.nn.softmax` and autodiff: values
  and the gradients of q, k, v, a per-row mask bias and a batch-shared
  relative-position bias, with masked keys, a fully masked query row and the
  broadcast dropout mask."""
  from distill_sbs.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  b, q, k, h, d = 3, 7, 9, 2, 5
  query, key, value = (jnp.asarray(rng.normal(size=(b, n, h, d)), jnp.float32)
                       for n in (q, k, k))
  mask = rng.random((b, 1, q, k)) > 0.3
  mask[1, 0, 2] = False  # a query that sees no key (a padding row)
  mask_bias = jnp.where(mask, 0.0, layers.NEG_INF).astype(jnp.float32)  # [b, 1, q, k]
  rel = jnp.asarray(rng.normal(size=(1, h, q, k)), jnp.float32)      # [1, h, q, k]
  keep = (jnp.asarray((rng.random((b, h, 1, k)) > 0.5) * 2.0, jnp.float32) if dropout
          else jnp.ones((), jnp.float32))

  def reference(query, key, value, rel):
    w = jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', query, key) + mask_bias + rel)
    return jnp.einsum('bhqk,bkhd->bqhd', w * keep, value)

  def ours(query, key, value, rel):
    return layers._softmax_attention(query, key, value, mask_bias + rel, keep)  # pylint: disable=protected-access

  args = (query, key, value, rel)
  np.testing.assert_allclose(ours(*args), reference(*args), rtol=1e-5, atol=1e-6)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)) * jnp.arange(d))
  got = jax.grad(loss(ours), argnums=(0, 1, 2, 3))(*args)
  want = jax.grad(loss(reference), argnums=(0, 1, 2, 3))(*args)
  for g, w in zip(got, want):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(want[3])).max() > 0.1  # the bias gradient is not trivially 0


def test_a_parameter_of_the_wrong_shape_is_named():
  """Apply reads existing parameters directly (no initialiser re-evaluation)
  but still checks each one's shape, naming its path."""
  from flax import errors as flax_errors
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        nn.meta.unbox(init_shapes(TINY)['params']))
  x, y = jnp.ones((1, 5), jnp.int32), jnp.ones((1, 3), jnp.int32)
  out = jax.eval_shape(lambda p: models.Transformer(TINY).apply(
      {'params': p}, x, y, y, enable_dropout=False), params)
  assert out.shape == (1, 3, 64)
  params['encoder']['layers_1']['mlp']['wo']['kernel'] = jnp.zeros((25, 16))
  with pytest.raises(flax_errors.ScopeParamShapeError,
                     match=r"(?s)kernel.*/encoder/layers_1/mlp/wo.*shape \(24, 16\).*shape \(25, 16\)"):
    models.Transformer(TINY).apply({'params': params}, x, y, y, enable_dropout=False)
