"""Decoder-only evaluation pieces: `score_batch` / `predict_batch` are the
models API on the inputs part; prefix-LM rows decode with a bidirectional
prompt; `student_eval`'s candidate rows; the HF-config and resume checks know
decoder-only gins."""
import jax
import numpy as np
import optax
import pytest
import tensorflow as tf

from distill_sbs import models
from distill_sbs.data import decoder_only_converters as doc
from distill_sbs.training import decoder_only_model
from test_decoder_only_train import CFG, _model


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
  # INITIAL_CHECKPOINT_PATH: the HF directory loads into the trainer's sharded state.
  from distill_sbs.models import checkpoint_formats  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import partitioning  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=(4, 2)))
  tr = trainer_lib.Trainer(model, mesh, partitioning.standard_logical_axis_rules(),
                           {'decoder_input_tokens': (8, 6)}, seed=7)
  state = tr.init_state()
  loaded = checkpoint_formats.load_initial_params(str(tmp_path / 'hf'), state.params,
                                                  tr.state_shardings.params)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(loaded),
                               jax.tree_util.tree_leaves(params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
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
