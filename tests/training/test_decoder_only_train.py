"""Decoder-only students through the project's trainer: the composed step-by-step
experiment (qwen3 tiny + CPU run + sbs_llm + cqa) trains with a falling loss
and evaluates to accuracies; the same steps give the same losses on 1 device
and on 2x2 / 8x1 meshes; every parameter has a partition spec; kv heads that
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
  for shape in ((8, 1), (2, 2)):
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


def test_kv_heads_the_model_axis_cannot_split_raise(batch):
  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=(2, 4)))
  with pytest.raises(partitioning.ShardingError, match='num_kv_heads=2.*4-way'):
    ts_lib.state_shardings(_model(), {k: v.shape for k, v in batch.items()}, mesh,
                           partitioning.standard_logical_axis_rules())


def test_score_and_predict_are_the_models_api_on_the_inputs_part():
  """`score_batch` = `models.score` summed and `predict_batch` = `models.generate`
  on the left-aligned inputs part (ids 0 inside the rows are real tokens)."""
  examples = [{'inputs': [5, 0, 7, 1], 'targets': [0, 9, 1]},
              {'inputs': [6, 1], 'targets': [4, 3, 2, 1]}]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={k: tf.TensorSpec([None], tf.int32)
                                                for k in examples[0]})
  rows = list(doc.DecoderOnlyFeatureConverter(pack=False)(
      ds, {'inputs': 4, 'targets': 4}).as_numpy_iterator())
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  model = _model()
  params = jax.tree_util.tree_map(
      lambda v: v.unbox() if hasattr(v, 'unbox') else v,
      model.get_initial_variables(jax.random.PRNGKey(1), {'decoder_input_tokens': (1, 4)})[
          'params'], is_leaf=lambda v: hasattr(v, 'unbox'))
  prompts = np.array([[5, 0, 7, 1], [6, 1, 0, 0]], np.int32)
  lengths = np.array([4, 2], np.int32)
  targets = np.array([[0, 9, 1, 0], [4, 3, 2, 1]], np.int32)
  want = models.score(CFG, params, prompts, targets, prompt_lengths=lengths,
                      target_lengths=np.array([3, 4]))
  np.testing.assert_allclose(np.asarray(model.score_batch(params, batch)),
                             np.asarray(want).sum(-1), rtol=1e-5)
  got_p, got_l = decoder_only_model.prompt_from_batch(batch)
  np.testing.assert_array_equal(np.asarray(got_l), lengths)
  tokens = model.predict_batch(params, batch, max_decode_length=3)
  ref, _ = models.generate(CFG, params, prompts, prompt_lengths=lengths, max_decode_length=3)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(ref))


def test_hf_and_resume_config_checks_know_decoder_only_gins(tmp_path):
  """An INITIAL_CHECKPOINT_PATH Hugging Face dir is checked against the
  DecoderOnlyConfig (not read as T5); resume compares its shape bindings."""
  from distill_sbs.training import config_checks  # pylint: disable=g-import-not-at-top
  model = _model()
  params = jax.tree_util.tree_map(
      lambda v: v.unbox() if hasattr(v, 'unbox') else v,
      model.get_initial_variables(jax.random.PRNGKey(0), {'decoder_input_tokens': (1, 4)})[
          'params'], is_leaf=lambda v: hasattr(v, 'unbox'))
  models.save_hf_checkpoint(str(tmp_path / 'hf'), CFG, params)
  config_checks.check_hf_config(str(tmp_path / 'hf'), CFG)
  with pytest.raises(config_checks.ConfigError, match='num_kv_heads: 2 in config.json, 4'):
    config_checks.check_hf_config(str(tmp_path / 'hf'), CFG.replace(num_kv_heads=4))
  text = open('t5x_configs/models/qwen3/tiny.gin', encoding='utf-8').read()
  shape = config_checks.model_shape_bindings(text)
  assert shape['DecoderOnlyConfig.num_kv_heads'] == 2
  (tmp_path / 'old.gin').write_text(text)
  config_checks.check_resume_config(str(tmp_path / 'old.gin'), text)
  with pytest.raises(config_checks.ConfigError, match='num_layers'):
    config_checks.check_resume_config(str(tmp_path / 'old.gin'),
                                      text.replace('num_layers = 2', 'num_layers = 3'))


def test_prefix_lm_rows_decode_with_a_bidirectional_prompt():
  """Greedy KV-cache decoding of prefix-LM rows equals the teacher-forced
  network with `decoder_causal_attention` on the prompt (what training saw)."""
  examples = [{'inputs': [5, 0, 7, 9, 1], 'targets': [3, 1]},
              {'inputs': [6, 1], 'targets': [4, 2, 1]}]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={k: tf.TensorSpec([None], tf.int32)
                                                for k in examples[0]})
  rows = list(doc.DecoderOnlyPrefixLMFeatureConverter(pack=False)(
      ds, {'inputs': 5, 'targets': 3}).as_numpy_iterator())
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  cfg = CFG.replace(num_layers=2)  # one layer's prompt keys are its embeddings
  model = decoder_only_model.DecoderOnlyModel(models.DecoderOnlyTransformer(cfg), None, None,
                                              optax.adam(0.01))
  params = jax.tree_util.tree_map(
      lambda v: v.unbox() if hasattr(v, 'unbox') else v,
      model.get_initial_variables(jax.random.PRNGKey(2), {'decoder_input_tokens': (1, 4)})[
          'params'], is_leaf=lambda v: hasattr(v, 'unbox'))
  tokens, aux = model.predict_batch_with_aux(params, batch, max_decode_length=4)
  tokens, scores = np.asarray(tokens), np.asarray(aux['scores'])
  net = models.DecoderOnlyTransformer(cfg)
  for r, ex in enumerate(examples):
    m = len(ex['inputs'])
    seq = np.array([ex['inputs'] + tokens[r].tolist()], np.int32)
    want = {}
    for prefix in (True, False):
      causal = (np.arange(seq.shape[1]) < m).astype(np.int32)[None] if prefix else None
      logits = net.apply({'params': params}, seq, enable_dropout=False,
                         decoder_causal_attention=causal)
      logp = np.asarray(jax.nn.log_softmax(np.asarray(logits)[0, m - 1:m + 3]))
      want[prefix] = (np.argmax(logp, -1), logp[np.arange(4), tokens[r]].sum())
    np.testing.assert_array_equal(tokens[r], want[True][0])  # (no EOS drawn here)
    np.testing.assert_allclose(scores[r], want[True][1], rtol=1e-5)
    assert abs(scores[r] - want[False][1]) > 1e-3  # a causal prompt scores otherwise


def test_student_eval_candidate_rows_for_decoder_only_rows():
  """Rank classification rows (`student_eval`): each example's inputs part
  followed by each candidate + EOS, loss on the candidate, segment ids on the
  real tokens (the 0 in the inputs is one)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import evaluation  # pylint: disable=g-import-not-at-top
  examples = [{'inputs': [5, 0, 1], 'targets': [70, 1]}, {'inputs': [6, 1], 'targets': [71, 1]}]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={k: tf.TensorSpec([None], tf.int32)
                                                for k in examples[0]})
  model_ds = doc.DecoderOnlyFeatureConverter(pack=False)(
      ds, {'inputs': 3, 'targets': 2}).enumerate()
  vocab = seqio.ByteVocabulary(extra_ids=0)
  rows = list(evaluation._candidate_rows(  # pylint: disable=protected-access
      model_ds, [['a', 'bc'], ['d']], vocab).as_numpy_iterator())
  assert [i for i, _ in rows] == [0, 1, 2, 3]
  f = {k: np.stack([r[k] for _, r in rows]) for k in rows[0][1]}
  a, b, c, d = (x + 3 for x in b'abcd')  # byte ids
  np.testing.assert_array_equal(f['decoder_input_tokens'], [
      [5, 0, 1, a, 0], [5, 0, 1, b, c], [6, 1, d, 0, 0], [6, 1, d, 0, 0]])
  np.testing.assert_array_equal(f['decoder_target_tokens'], [
      [0, 1, a, 1, 0], [0, 1, b, c, 1], [1, d, 1, 0, 0], [1, d, 1, 0, 0]])
  np.testing.assert_array_equal(f['decoder_loss_weights'], [
      [0, 0, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(f['decoder_segment_ids'], [
      [1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
