"""Decoder-only students through the project's trainer: the composed step-by-step
experiment (qwen3 tiny + CPU run + sbs_llm + cqa) trains with a falling loss
and evaluates to accuracies; the same steps give the same losses on 1 device
and on a 4x2 mesh (8 devices); every parameter has a partition spec; kv heads that
the model axis cannot split raise `ShardingError`."""
import jax
import numpy as np
import optax
import pytest
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec as P

from distill_sbs import models
from distill_sbs.data import decoder_only_converters as doc
from distill_sbs.distill import losses
from distill_sbs.training import decoder_only_model
from distill_sbs.training import partitioning
from distill_sbs.training import train_state as ts_lib
from distill_sbs.training import trainer as trainer_lib

PARTS = ['t5x_configs/models/qwen3/tiny.gin', 'gin/runs/cpu.gin', 'gin/methods/sbs_llm.gin',
         'gin/datasets/cqa.gin']


def _train_metrics(files, bindings):
  import gin  # pylint: disable=g-import-not-at-top
  from distill_sbs.experiments import runs as runs_lib  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import gin_utils  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import train_loop  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_utils.parse_gin(files, bindings)
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    gin.get_configurable(train_loop.train)()
    model_dir = gin_utils.query_model_dir()
  finally:
    gin.clear_config()
  return model, runs_lib.read_metrics(f'{model_dir}/metrics.jsonl')


def test_composed_step_by_step_run_trains_and_evaluates(sbs_data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(sbs_data_dir))
  model, rows = _train_metrics(PARTS, [
      f"MODEL_DIR = '{tmp_path / 'run'}'", 'TRAIN_STEPS = 10', 'BATCH_SIZE = 8',
      'LOG_PERIOD = 1', 'EVAL_PERIOD = 10', 'EVAL_STEPS = 1', 'CHECKPOINT_PERIOD = 10',
      'EVAL_NUM_EXAMPLES = 4', 'LEARNING_RATE = 0.03', 'INPUTS_LENGTH = 96',
      'RATIONALE_LENGTH = 32', 'ALLOW_TRUNCATION = True', 'MAX_DECODE_LENGTH = 4'])
  assert isinstance(model, decoder_only_model.DecoderOnlyModel)
  assert model.config.model_type == 'qwen3'
  train = [r for r in rows if 'loss' in r]
  assert [r['step'] for r in train] == list(range(1, 11))
  assert train[-1]['loss'] < train[0]['loss'] - 0.5, [r['loss'] for r in train]
  assert 'label_loss' in train[0] and 'rationale_loss' in train[0]
  # Decoder only: slot efficiency from segment ids, no encoder side.
  assert all(0.5 < r['decoder_slot_efficiency'] <= 1 for r in train)
  assert not any('encoder_slot_efficiency' in r for r in train)
  last = rows[-1]
  acc = {k: v for k, v in last.items() if k.startswith('eval/') and k.endswith('accuracy')}
  # Generation accuracy of the label task and rank accuracy of the rank task.
  assert len(acc) >= 2 and all(0 <= v <= 100 for v in acc.values()), last
  assert 'validation/loss' in last and np.isfinite(last['validation/loss'])


# ---------------------------------------------------------------- mesh equivalence
CFG = models.DecoderOnlyConfig(model_type='qwen3', vocab_size=64, emb_dim=32, num_heads=4,
                               num_kv_heads=2, num_layers=1, head_dim=8, mlp_dim=64,
                               qk_norm=True)


def _model():
  return decoder_only_model.DecoderOnlyModel(
      models.DecoderOnlyTransformer(CFG), None, None, optax.adam(0.01),
      loss_fn=losses.StepByStepLoss(alpha=0.5))


def _batch():
  rng = np.random.default_rng(0)
  tok = lambda n: np.concatenate([rng.integers(0, 64, n - 1), [1]]).astype(np.int32)
  examples = [{'inputs': tok(5), 'targets': tok(3), 'rationale_inputs': tok(5),
               'rationale_targets': tok(6)} for _ in range(8)]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={k: tf.TensorSpec([None], tf.int32)
                                                for k in examples[0]})
  rows = list(doc.DecoderOnlyPairedFeatureConverter(pack=True)(
      ds, {'inputs': 6, 'targets': 10}).as_numpy_iterator())
  rows = (rows * 8)[:8]  # 8 rows (a multiple of every data axis below)
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _train(shape, batch, steps=3):
  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=shape),
                                  jax.devices()[:shape[0] * shape[1]])
  tr = trainer_lib.Trainer(_model(), mesh, partitioning.standard_logical_axis_rules(),
                           {k: v.shape for k, v in batch.items()})
  state = tr.init_state()
  out = []
  for _ in range(steps):
    state, metrics = tr.train_step(state, tr.shard_batch(batch))
    out.append(float(metrics['loss']))
  return out, state, tr


@pytest.fixture(scope='module')
def batch():
  return _batch()


def test_same_losses_on_one_device_and_meshes(batch):
  assert int(batch['decoder_segment_ids'].max()) > 1  # packed rows
  ref, _, _ = _train((1, 1), batch)
  assert ref[-1] < ref[0]
  for shape in ((4, 2),):  # 8 devices, 2-way model parallel
    got, state, tr = _train(shape, batch)
    np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=str(shape))
  # Every parameter has a partition spec of its rank; kv heads shard like
  # T5X's heads (joined_kv over 'model').
  flat = jax.tree_util.tree_flatten_with_path(tr.state_shardings.params)[0]
  params = dict(jax.tree_util.tree_flatten_with_path(state.params)[0])
  assert flat
  for path, sh in flat:
    assert isinstance(sh, NamedSharding), path
    assert len(sh.spec) <= params[path].ndim, path
  layer = state.params['decoder']['layers_0']['self_attention']
  for name in ('query', 'key', 'value'):
    assert layer[name]['kernel'].sharding.spec == P(None, 'model'), name
  assert layer['key']['kernel'].addressable_shards[0].data.shape == (32, 2 * 8 // 2)
  assert len(layer['key']['kernel'].addressable_shards) == 8


def test_kv_heads_the_model_axis_cannot_split_raise(batch):
  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=(2, 4)))
  with pytest.raises(partitioning.ShardingError, match='num_kv_heads=2.*4-way'):
    ts_lib.state_shardings(_model(), {k: v.shape for k, v in batch.items()}, mesh,
                           partitioning.standard_logical_axis_rules())

