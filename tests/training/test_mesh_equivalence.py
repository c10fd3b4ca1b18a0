"""The same steps on 1 device, a 2×4 and an 8×1 mesh give the same losses and
parameters; gradient accumulation equals the full batch; restore onto another
mesh."""
import jax
import numpy as np
import pytest
from flax import traverse_util

import train_helpers as helpers
from distill_sbs.training import checkpoints
from distill_sbs.training import partitioning
from distill_sbs.training import train_state as ts_lib
from distill_sbs.training import trainer as trainer_lib

SMALL = dict(emb_dim=32, num_heads=4, head_dim=8, num_encoder_layers=1,
             num_decoder_layers=1, mlp_dim=64)


def _train(shape, batches, num_microbatches=1):
  model = helpers.tiny_model(**SMALL)
  devices = jax.devices()[:shape[0] * shape[1]]
  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=shape), devices)
  tr = trainer_lib.Trainer(model, mesh, partitioning.standard_logical_axis_rules(),
                           helpers.input_shapes(batches[0]),
                           num_microbatches=num_microbatches)
  state = tr.init_state()
  losses_ = []
  for b in batches:
    state, metrics = tr.train_step(state, tr.shard_batch(b))
    losses_.append(float(metrics['loss']))
  return losses_, state, tr


@pytest.fixture(scope='module')
def batches():
  # One batch seen three times, so the loss must fall. Both halves of the
  # batch have the same number of real target tokens (see synthetic_batches),
  # so the mean of the two microbatch gradients is the full-batch gradient.
  return helpers.synthetic_batches(1, batch=8) * 3


@pytest.fixture(scope='module')
def reference(batches):
  return _train((1, 1), batches)


def _flat(params):
  return traverse_util.flatten_dict(jax.device_get(params))


# The 2×4 run also accumulates gradients over 2 microbatches (saves a compile):
# the mean of the microbatch gradients equals the full-batch gradient.
@pytest.mark.parametrize('shape,microbatches', [((2, 4), 2), ((8, 1), 1)])
def test_mesh_equivalence(batches, reference, shape, microbatches):
  ref_losses, ref_state, _ = reference
  got_losses, state, tr = _train(shape, batches, num_microbatches=microbatches)
  np.testing.assert_allclose(got_losses, ref_losses, atol=1e-5)
  assert ref_losses[-1] < ref_losses[0]
  ref, got = _flat(ref_state.params), _flat(state.params)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], atol=1e-5, err_msg='/'.join(k))
  # Parameters really are laid out on the mesh by their logical axes.
  wi = state.params['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert wi.sharding.spec == jax.sharding.PartitionSpec(None, 'model')
  assert len(wi.addressable_shards) == shape[0] * shape[1]
  if shape[1] > 1:
    assert wi.addressable_shards[0].data.shape == (32, 64 // shape[1])
  # Accumulation really loops over microbatches in the compiled step.
  lowered = tr._train_step.lower(state, tr.shard_batch(batches[0])).as_text()
  assert ('stablehlo.while' in lowered) == (microbatches > 1)


def test_restore_onto_another_mesh(tmp_path, batches, reference):
  _, state, tr = reference
  ckpt = checkpoints.RunCheckpointer(str(tmp_path), save_period=1, async_save=True)
  ckpt.save(3, state, {'position': 3}, force=True)
  ckpt.close()
  model = helpers.tiny_model(**SMALL)
  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=(2, 4)))
  tr2 = trainer_lib.Trainer(model, mesh, partitioning.standard_logical_axis_rules(),
                            helpers.input_shapes(batches[0]))
  target = ts_lib.abstract_with_shardings(tr2.abstract_state, tr2.state_shardings)
  ckpt2 = checkpoints.RunCheckpointer(str(tmp_path))
  restored, data = ckpt2.restore(None, target)
  ckpt2.close()
  assert data == {'position': 3} and int(restored.step) == 3
  wi = restored.params['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert wi.sharding.spec == jax.sharding.PartitionSpec(None, 'model')
  assert wi.addressable_shards[0].data.shape == (32, 16)
  ref, got = _flat(state.params), _flat(restored.params)
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k])


def test_donating_the_state_gives_the_same_numbers(batches, reference):
  """CPU default: no donation (XLA:CPU would copy every donated parameter);
  donate_state=True reuses the incoming buffers; same losses and parameters."""
  ref_losses, ref_state, tr = reference
  assert tr.donate_state is False  # the suite runs on CPU
  model = helpers.tiny_model(**SMALL)
  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=(1, 1)),
                                  jax.devices()[:1])
  tr2 = trainer_lib.Trainer(model, mesh, partitioning.standard_logical_axis_rules(),
                            helpers.input_shapes(batches[0]), donate_state=True)
  state, got_losses = tr2.init_state(), []
  for b in batches:
    old = state
    state, metrics = tr2.train_step(state, tr2.shard_batch(b))
    got_losses.append(float(metrics['loss']))
    assert all(x.is_deleted() for x in jax.tree.leaves(old.params))  # buffers reused
  np.testing.assert_array_equal(got_losses, ref_losses)
  ref, got = _flat(ref_state.params), _flat(state.params)
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k])
  # Without donation the caller's state stays readable after the step.
  old = tr.init_state()
  tr.train_step(old, tr.shard_batch(batches[0]))
  assert not any(x.is_deleted() for x in jax.tree.leaves(old.params))
