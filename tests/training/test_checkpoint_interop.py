"""T5X checkpoints read directly (Orbax and legacy), the legacy writer's bytes,
and the step reported for a checkpoint path (no T5X needed)."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization
from flax import traverse_util

from distill_sbs.models import checkpoint_formats
from distill_sbs.training import checkpoints
from distill_sbs.training import evaluation


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {'token_embedder': {'embedding': rng.normal(size=(16, 4)).astype(np.float32)},
          'encoder': {'layers_0': {'mlp': {'wi': {'kernel': rng.normal(size=(4, 8))
                                                  .astype(np.float32)}}},
                      'encoder_norm': {'scale': np.ones((4,), np.float32) + seed}},
          'decoder': {'logits_dense': {'kernel': rng.normal(size=(4, 16))
                                       .astype(np.float32)}}}


def _assert_same(want, got):
  want, got = traverse_util.flatten_dict(want), traverse_util.flatten_dict(got)
  assert got.keys() == want.keys()
  for k, v in want.items():
    np.testing.assert_array_equal(np.asarray(got[k]), v)
    assert np.asarray(got[k]).dtype == v.dtype


def _write_t5x_orbax(model_dir, step, params):
  """As `t5x.checkpoints.OrbaxCheckpointManagerInterface.save`: step prefix
  'checkpoint', item 'state' = the train state's state_dict."""
  opts = ocp.CheckpointManagerOptions(step_prefix='checkpoint', create=True,
                                      enable_async_checkpointing=False)
  mngr = ocp.CheckpointManager(str(model_dir), options=opts, item_names=('state',))
  state = {'target': params,
           'state': {'step': np.asarray(step, np.int32),
                     'param_states': jax.tree.map(lambda x: np.zeros_like(x) + 0.5, params)}}
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)), force=True)
  mngr.wait_until_finished()
  mngr.close()


def test_t5x_orbax_checkpoint_is_read_directly(tmp_path):
  model_dir = tmp_path / 'm4'
  _write_t5x_orbax(model_dir, 20, _params(0))
  _write_t5x_orbax(model_dir, 60, _params(1))
  assert (model_dir / 'checkpoint_60' / 'state').is_dir()
  # Model dir -> latest step; a checkpoint_<N> dir -> that step.
  _assert_same(_params(1), checkpoint_formats.read_params(str(model_dir)))
  _assert_same(_params(0), checkpoint_formats.read_params(str(model_dir / 'checkpoint_20')))
  _assert_same(_params(0), checkpoint_formats.read_t5x_params(str(model_dir), step=20))
  assert checkpoint_formats.t5x_checkpoint_dir(str(model_dir)) == str(model_dir / 'checkpoint_60')
  with pytest.raises(FileNotFoundError, match=r'has no checkpoint_5 \(steps: \[20, 60\]\)'):
    checkpoint_formats.t5x_checkpoint_dir(str(model_dir), step=5)
  # INITIAL_CHECKPOINT_PATH / eval path: placed onto shardings.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _params())
  loaded = checkpoint_formats.load_params(str(model_dir / 'checkpoint_60'), abstract,
                                          jax.tree.map(lambda _: rep, abstract))
  _assert_same(_params(1), jax.tree.map(np.asarray, loaded))
  assert evaluation.checkpoint_step(str(model_dir)) == 60


def test_legacy_writer_bytes_and_round_trip(tmp_path):
  params = _params(2)
  ckpt = tmp_path / 'checkpoint_7'
  checkpoint_formats.write_t5x_checkpoint(str(ckpt), params, step=7, tensorstore_min_size=20)
  with open(ckpt / 'checkpoint', 'rb') as f:
    raw = serialization.msgpack_restore(f.read())
  # t5x.checkpoints.Checkpointer's layout: {'version': 3, 'optimizer': {target, state}}.
  assert sorted(raw) == ['optimizer', 'version'] and raw['version'] == 3
  assert sorted(raw['optimizer']) == ['state', 'target']
  assert int(raw['optimizer']['state']['step']) == 7
  target = raw['optimizer']['target']
  spec = target['encoder']['layers_0']['mlp']['wi']['kernel']  # 32 elements: tensorstore
  assert spec['driver'] == 'zarr' and spec['dtype'] == 'float32'
  assert spec['kvstore'] == {'driver': 'file', 'path': 'target.encoder.layers_0.mlp.wi.kernel'}
  assert spec['metadata']['shape'] == [4, 8]
  assert (ckpt / 'target.encoder.layers_0.mlp.wi.kernel' / '.zarray').is_file()
  np.testing.assert_array_equal(target['encoder']['encoder_norm']['scale'],  # 4: inline
                                params['encoder']['encoder_norm']['scale'])
  assert not (ckpt / 'target.encoder.encoder_norm.scale').exists()
  assert not (ckpt / 'checkpoint.tmp').exists()
  # Readers: step dir, model dir (latest checkpoint_<N>), T5X reader.
  _assert_same(params, checkpoint_formats.read_params(str(ckpt)))
  _assert_same(params, checkpoint_formats.read_params(str(tmp_path)))
  _assert_same(params, checkpoint_formats.read_t5x_params(str(tmp_path)))
  assert int(checkpoint_formats.load_t5x_checkpoint(str(ckpt))['state']['step']) == 7

  # Inline only (the converter's --to_t5x): no zarr stores, same parameters.
  inline = tmp_path / 'inline' / 'checkpoint_3'
  checkpoint_formats.write_t5x_checkpoint(str(inline), params, step=3, tensorstore_min_size=None)
  assert sorted(os.listdir(inline)) == ['checkpoint']
  with open(inline / 'checkpoint', 'rb') as f:
    raw = serialization.msgpack_restore(f.read())
  _assert_same(params, raw['optimizer']['target'])
  _assert_same(params, checkpoint_formats.read_params(str(inline.parent)))


def test_project_run_and_unknown_directories(tmp_path):
  run = tmp_path / 'p4'  # a run folder whose name has digits
  ckptr = checkpoints.RunCheckpointer(str(run), save_period=1, keep=None, async_save=False)
  ckptr.save(60, {'step': np.asarray(60, np.int32), 'params': _params(3)}, {}, force=True)
  ckptr.close()
  _assert_same(_params(3), checkpoint_formats.read_params(str(run)))
  step_of = evaluation.checkpoint_step
  assert step_of(str(run)) == 60
  assert step_of(str(run / 'checkpoints')) == 60
  assert step_of(str(run / 'checkpoints' / '60')) == 60
  empty = tmp_path / 'p5'
  empty.mkdir()
  assert step_of(str(empty)) == -1  # not 5
  assert step_of(str(tmp_path / 'hf7')) == -1
  checkpoint_formats.write_t5x_checkpoint(str(tmp_path / 'run9' / 'checkpoint_12'), _params(),
                                          tensorstore_min_size=None)
  assert step_of(str(tmp_path / 'run9')) == 12
  assert checkpoint_formats.step_from_dir_name('checkpoint_12') == 12
  assert checkpoint_formats.step_from_dir_name('12') == 12
  for name in ('p4', 'checkpoint_12x', 'xcheckpoint_1', 'checkpoint_', 'state'):
    assert checkpoint_formats.step_from_dir_name(name) is None
  with pytest.raises(ValueError, match='not a Hugging Face directory'):
    checkpoint_formats.read_params(str(empty))
