"""Fast unit tests: schedules, optimizers, gin flags, required macros, mesh
construction, initial checkpoints (T5X legacy, HF, ours) with assignment maps."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from distill_sbs.models import checkpoint_formats
from distill_sbs.training import gin_utils
from distill_sbs.training import optimizers
from distill_sbs.training import partitioning


def test_schedules_hand_computed():
  rs = optimizers.rsqrt_decay(base_learning_rate=1.0, warmup_steps=100)
  np.testing.assert_allclose([rs(0), rs(50), rs(100), rs(400)], [0.1, 0.1, 0.1, 0.05], rtol=1e-6)
  rw = optimizers.rsqrt_decay(1.0, 100, linear_warmup=True)
  np.testing.assert_allclose([rw(50), rw(400)], [0.05, 0.05], rtol=1e-6)
  lin = optimizers.linear(init_value=1.0, end_value=0.0, decay_steps=10, warmup_steps=2)
  np.testing.assert_allclose([lin(1), lin(2), lin(6), lin(10)], [0.5, 1.0, 0.5, 0.0], atol=1e-6)
  cos = optimizers.cosine(init_value=1.0, decay_steps=10)
  np.testing.assert_allclose([cos(0), cos(5), cos(10)], [1.0, 0.5, 0.0], atol=1e-6)
  np.testing.assert_allclose(optimizers.constant(0.3)(7), 0.3)


def test_adafactor_t5x_defaults_and_adamw():
  opt = optimizers.adafactor()
  np.testing.assert_allclose(opt.learning_rate(0), 0.01, rtol=1e-6)  # rsqrt, warmup 1e4
  ref = optax.adafactor(learning_rate=0.01, decay_rate=0.8, multiply_by_parameter_scale=True,
                        clipping_threshold=1.0, factored=True)
  params = {'w': jnp.arange(1., 256 * 128 + 1.).reshape(256, 128) / 1e4, 'b': jnp.ones((3,))}
  grads = jax.tree.map(lambda p: jnp.sin(p) * 0.5, params)
  got, _ = opt.update(grads, opt.init(params), params)
  want, _ = ref.update(grads, ref.init(params), params)
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
  # Factored second moments for the 256×128 matrix (row + column statistics).
  shapes = [l.shape for l in jax.tree.leaves(opt.init(params))]
  assert (256,) in shapes and (128,) in shapes and (256, 128) not in shapes
  adam = optimizers.adamw(0.1, global_norm_clip=None)
  upd, _ = adam.update({'b': jnp.full((3,), 2.0)}, adam.init({'b': jnp.zeros(3)}),
                       {'b': jnp.zeros(3)})
  np.testing.assert_allclose(upd['b'], -0.1 * np.ones(3), rtol=1e-5)  # Adam's first step


def test_gin_flag_rewriting():
  out = gin_utils.rewrite_gin_args(
      ['prog', '--gin.MODEL_DIR=runs/x', '--gin.TRAIN_STEPS=5', "--gin.NAME='a'",
       '--gin.MODEL=@foo.bar()', '--gin_file=f.gin', '--gin.X=None', '--gin.L=[1, 2]'])
  assert out == ['prog', "--gin_bindings=MODEL_DIR = 'runs/x'", '--gin_bindings=TRAIN_STEPS = 5',
                 "--gin_bindings=NAME = 'a'", '--gin_bindings=MODEL = @foo.bar()',
                 '--gin_file=f.gin', '--gin_bindings=X = None', '--gin_bindings=L = [1, 2]']
  with pytest.raises(ValueError, match='--gin.NAME=VALUE'):
    gin_utils.rewrite_gin_args(['--gin.MODEL_DIR'])


def test_required_macros_are_named(tmp_path):
  f = tmp_path / 'run.gin'
  f.write_text('A = %gin.REQUIRED\nB = %gin.REQUIRED\nC = 3\n')
  with gin.unlock_config():
    gin.clear_config()
    try:
      with pytest.raises(ValueError, match=r'required gin macro\(s\) not set: A, B'):
        gin_utils.parse_gin([str(f)], ['B = 2'][:0])
      gin.clear_config()
      with pytest.raises(ValueError, match=r'not set: A \(pass e.g. --gin.A=...\)'):
        gin_utils.parse_gin([str(f)], ['B = 2'])
      gin.clear_config()
      gin_utils.parse_gin([str(f)], ['A = 1', 'B = 2'])
      assert gin.query_parameter('%A') == 1
    finally:
      gin.clear_config()


def test_create_mesh_shapes():
  assert dict(partitioning.create_mesh().shape) == {'data': 8, 'model': 1}
  assert dict(partitioning.create_mesh(partitioning.MeshConfig(num_partitions=2)).shape) == {
      'data': 4, 'model': 2}
  m = partitioning.create_mesh(partitioning.MeshConfig(model_parallel_submesh=(1, 2, 1, 2)))
  assert dict(m.shape) == {'data': 2, 'model': 4}
  with pytest.raises(ValueError, match='not divisible'):
    partitioning.create_mesh(partitioning.MeshConfig(num_partitions=3))
  with pytest.raises(ValueError, match='needs 4 devices, found 8'):
    partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=(2, 2)))


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {'encoder': {'layers_0': {'mlp': {'wi': {'kernel': rng.normal(size=(4, 8)).astype(np.float32)}}},
                      'encoder_norm': {'scale': rng.normal(size=(4,)).astype(np.float32)}},
          'decoder': {'logits_dense': {'kernel': rng.normal(size=(4, 16)).astype(np.float32)}}}


def _sharded(params, mesh):
  def put(path, x):
    spec = jax.sharding.PartitionSpec(None, 'model') if x.ndim == 2 else jax.sharding.PartitionSpec()
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
  return jax.tree_util.tree_map_with_path(put, params)


def test_t5x_legacy_checkpoint_with_assignment_map(tmp_path):
  src = _params(1)
  checkpoint_formats.write_t5x_checkpoint(str(tmp_path / 'checkpoint_100'), src, step=100,
                                          tensorstore_min_size=10)
  # Big arrays became zarr stores beside the msgpack file, small ones inline.
  assert (tmp_path / 'checkpoint_100' / 'target.encoder.layers_0.mlp.wi.kernel').is_dir()
  assert not (tmp_path / 'checkpoint_100' / 'target.encoder.encoder_norm.scale').exists()
  loaded = checkpoint_formats.load_t5x_checkpoint(str(tmp_path / 'checkpoint_100'))
  assert int(loaded['state']['step']) == 100
  for k, v in traverse_util.flatten_dict(src).items():
    np.testing.assert_array_equal(traverse_util.flatten_dict(loaded['target'])[k], v)

  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=(2, 4)))
  target = _sharded(_params(2), mesh)
  amap = [(r'decoder/logits_dense/.*', None),  # keep the freshly initialised head
          (r'encoder/encoder_norm/scale', r'encoder/encoder_norm/scale')]
  new = checkpoint_formats.load_initial_params(str(tmp_path / 'checkpoint_100'), target,
                                               jax.tree.map(lambda x: x.sharding, target), amap)
  np.testing.assert_array_equal(new['encoder']['layers_0']['mlp']['wi']['kernel'],
                                src['encoder']['layers_0']['mlp']['wi']['kernel'])
  np.testing.assert_array_equal(new['decoder']['logits_dense']['kernel'],
                                _params(2)['decoder']['logits_dense']['kernel'])
  assert new['encoder']['layers_0']['mlp']['wi']['kernel'].sharding.spec == \
      jax.sharding.PartitionSpec(None, 'model')
  # Renaming through the map, and clear errors.
  renamed = {'enc': src['encoder'], 'decoder': src['decoder']}
  flat, loaded_paths = checkpoint_formats.assign_params(_params(2), renamed,
                                                        [(r'encoder/(.*)', r'enc/\1')])
  np.testing.assert_array_equal(flat['encoder/encoder_norm/scale'],
                                src['encoder']['encoder_norm']['scale'])
  assert len(loaded_paths) == 3
  with pytest.raises(KeyError, match="no parameter 'encoder/layers_0/mlp/wi/kernel'"):
    checkpoint_formats.assign_params(_params(2), {'decoder': src['decoder']})
  bad = _params(2)
  bad['decoder']['logits_dense']['kernel'] = np.zeros((4, 3), np.float32)
  with pytest.raises(ValueError, match=r'shape \(4, 16\).*expects \(4, 3\)'):
    checkpoint_formats.assign_params(bad, src)
  with pytest.raises(FileNotFoundError, match='not a directory'):
    checkpoint_formats.read_params(str(tmp_path / 'nope'))


def test_initial_params_from_hf_directory(tmp_path):
  from distill_sbs import models
  cfg = models.T5Config(vocab_size=384, emb_dim=16, num_heads=2, head_dim=8,
                        num_encoder_layers=1, num_decoder_layers=1, mlp_dim=32)
  shapes = jax.eval_shape(
      lambda: models.Transformer(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32),
                                           jnp.ones((1, 4), jnp.int32),
                                           jnp.ones((1, 4), jnp.int32),
                                           enable_dropout=False))['params']
  shapes = jax.tree.map(lambda x: x.value if hasattr(x, 'value') else x, shapes,
                        is_leaf=lambda x: hasattr(x, 'value'))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  models.save_hf_checkpoint(str(tmp_path / 'hf'), cfg, params)
  got = checkpoint_formats.read_params(str(tmp_path / 'hf'))
  want = traverse_util.flatten_dict(params)
  got = traverse_util.flatten_dict(got)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6)


def test_cli_dispatch(capsys):
  from distill_sbs import cli
  with pytest.raises(SystemExit) as e:
    cli.main(['distill-sbs', 'bogus'])
  assert e.value.code == 2 and "unknown command 'bogus'" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    cli.main(['distill-sbs', '--help'])
  assert e.value.code == 0 and 'train' in capsys.readouterr().out


def test_token_accuracy_is_argmax_accuracy_with_ties():
  """`first_argmax` is `jnp.argmax` (the first maximum), ties included."""
  from distill_sbs.training import model as model_lib
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 3, (4, 6, 5)).astype(np.float32)  # many ties
  logits[0, 0] = 7.0                                          # all tied: index 0
  logits[1, 1] = [-np.inf, 2, 2, -np.inf, 1]
  np.testing.assert_array_equal(model_lib.first_argmax(jnp.asarray(logits)),
                                np.argmax(logits, axis=-1))
  targets = rng.integers(1, 5, (4, 6)).astype(np.int32)
  targets[0, 0], targets[1, 1] = 0, 2
  weights = (rng.random((4, 6)) > 0.3).astype(np.float32)
  got = model_lib.token_accuracy_sums(jnp.asarray(logits), {
      'decoder_target_tokens': targets, 'decoder_loss_weights': weights})
  assert float(got['correct_tokens']) == np.sum((np.argmax(logits, -1) == targets) & (weights > 0))
  assert float(got['real_tokens']) == weights.sum()
