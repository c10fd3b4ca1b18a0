"""Packing changes no objective: on the same examples, packed and padded batches
give the same loss, the same gradients (fp32, 1e-5) and the same label /
rationale split through the real network (segment masks, relative position
bias) and the real converters of every training objective."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from distill_sbs.data import feature_converters
from distill_sbs.data import topk
from distill_sbs.distill import losses
from distill_sbs.models import T5Config, Transformer
from distill_sbs.training import model as model_lib

VOCAB = 40
K = 4
CFG = T5Config(vocab_size=VOCAB, emb_dim=16, num_heads=2, num_encoder_layers=2,
               num_decoder_layers=2, head_dim=8, mlp_dim=32, dropout_rate=0.0,
               dtype='float32')
LENGTHS = {'inputs': 24, 'targets': 20}


def _tokens(rng, n):
  return np.concatenate([rng.integers(2, VOCAB, n - 1), [1]]).astype(np.int32)


def _examples(kind, n=7, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    ex = {'inputs': _tokens(rng, int(rng.integers(3, 9))),
          'targets': _tokens(rng, int(rng.integers(2, 6)))}
    if kind == 'paired':
      ex['rationale_inputs'] = _tokens(rng, int(rng.integers(3, 9)))
      ex['rationale_targets'] = _tokens(rng, int(rng.integers(4, 10)))
    if kind == 'first':
      L = len(ex['targets'])
      ids = np.stack([ex['targets']] + [rng.integers(0, VOCAB, L) for _ in range(K - 1)], 1)
      lps = np.log(rng.dirichlet(np.ones(K + 1), L)[:, :K]).astype(np.float32)
      lps[:, 0] = 0.0 if rng.random() < 0.3 else lps[:, 0]  # a certain teacher: lp 0
      ex['teacher_topk_ids'] = ids.astype(np.int32)
      ex['teacher_topk_logprobs'] = lps
    out.append(ex)
  return out


def _dataset(examples):
  sig = {k: tf.TensorSpec([None] + list(np.asarray(v).shape[1:]),
                          tf.float32 if np.asarray(v).dtype == np.float32 else tf.int32)
         for k, v in examples[0].items()}
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=sig)


OBJECTIVES = {
    # name: (examples kind, converter class, loss)
    'label': ('label', seqio.EncDecFeatureConverter, losses.CrossEntropyLoss()),
    'rationale_output': ('label', seqio.EncDecFeatureConverter,
                         losses.CrossEntropyLoss(label_smoothing=0.1)),
    'paired_sbs': ('paired', feature_converters.PairedEncDecFeatureConverter,
                   losses.StepByStepLoss(alpha=0.3)),
    'first': ('first', topk.TopKFeatureConverter,
              losses.TopKDistillLoss(kl_weight=0.7, teacher_temperature=1.5,
                                     rest_bucket=True)),
}


def _all_rows(kind, cls, pack, **kwargs):
  ds = cls(pack=pack, **kwargs)(_dataset(_examples(kind)), LENGTHS)
  rows = list(ds.as_numpy_iterator())
  return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def _sequences(batch):
  """Each example's target tokens, cut out of padded or packed rows."""
  tgt = np.asarray(batch['decoder_target_tokens'])
  seg = np.asarray(batch.get('decoder_segment_ids', (tgt > 0).astype(np.int32)))
  return [tuple(row[s == i]) for row, s in zip(tgt, seg) for i in range(1, s.max() + 1)]


def _loss_and_grads(params, batch, loss_fn, cfg=CFG):
  model = model_lib.EncoderDecoderModel.__new__(model_lib.EncoderDecoderModel)
  model.module = Transformer(cfg)

  def f(p):
    logits = model.compute_logits(p, batch)
    loss, metrics = loss_fn(logits, batch)
    return loss, metrics
  (loss, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
  return loss, metrics, grads


def _params(batch):
  """Unboxed parameters of the tiny network, initialised on one row of `batch`."""
  params = Transformer(CFG).init(jax.random.PRNGKey(0), batch['encoder_input_tokens'][:1],
                                 batch['decoder_input_tokens'][:1],
                                 batch['decoder_target_tokens'][:1], enable_dropout=False)
  return jax.tree_util.tree_map(lambda v: v.unbox() if hasattr(v, 'unbox') else v,
                                params['params'], is_leaf=lambda v: hasattr(v, 'unbox'))


def _assert_same_grads(g_a, g_b):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_a),
                          jax.tree_util.tree_leaves(g_b)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('name', sorted(OBJECTIVES))
def test_packed_equals_padded(name):
  kind, cls, loss_fn = OBJECTIVES[name]
  padded = _all_rows(kind, cls, pack=False)
  packed = _all_rows(kind, cls, pack=True)
  assert packed['decoder_target_tokens'].shape[0] < padded['decoder_target_tokens'].shape[0]
  assert 'decoder_segment_ids' in packed
  # The same target sequences (first-fit packing may reorder them).
  assert sorted(_sequences(padded)) == sorted(_sequences(packed))
  params = _params(padded)
  loss_a, m_a, g_a = _loss_and_grads(params, padded, loss_fn)
  loss_b, m_b, g_b = _loss_and_grads(params, packed, loss_fn)
  np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-5, atol=1e-6)
  _assert_same_grads(g_a, g_b)
  if name == 'paired_sbs':
    for key in ('label_loss', 'rationale_loss', 'label_tokens', 'rationale_tokens'):
      np.testing.assert_allclose(float(m_a[key]), float(m_b[key]), rtol=1e-5)
    assert float(m_a['rationale_tokens']) > float(m_a['label_tokens']) > 0


@pytest.mark.parametrize('name', ['paired_sbs', 'first'])
def test_block_packed_equals_padded(name):
  """Encoder blocks (`T5Config.encoder_block_length`, packing with
  `encoder_block_length`): attention per block gives the padded numbers."""
  from distill_sbs.training import input_pipeline  # pylint: disable=g-import-not-at-top
  kind, cls, loss_fn = OBJECTIVES[name]
  block = LENGTHS['inputs'] // 2
  blocked_cfg = CFG.replace(encoder_block_length=block)
  padded = _all_rows(kind, cls, pack=False)
  blocked = _all_rows(kind, cls, pack=True, encoder_block_length=block)
  whole = _all_rows(kind, cls, pack=True)
  assert sorted(_sequences(padded)) == sorted(_sequences(blocked))
  input_pipeline.check_encoder_blocks(blocked, block)  # no segment crosses a block
  with pytest.raises(ValueError, match='crosses the block boundary at position 12'):
    input_pipeline.check_encoder_blocks(whole, block)  # whole-row packing does
  seg = np.asarray(blocked['encoder_segment_ids'])
  assert (np.diff(seg, axis=1)[seg[:, 1:] > 0] >= 0).all()  # ids increase along rows
  params = _params(padded)
  loss_a, m_a, g_a = _loss_and_grads(params, padded, loss_fn)
  loss_b, m_b, g_b = _loss_and_grads(params, blocked, loss_fn, blocked_cfg)
  np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-5, atol=1e-6)
  _assert_same_grads(g_a, g_b)
  for key in m_a:
    np.testing.assert_allclose(float(m_a[key]), float(m_b[key]), rtol=1e-5, atol=1e-6,
                               err_msg=key)
  # The blocked model really attends per block: on whole-row packing (segments
  # across the boundary) its loss is not the padded one.
  loss_c, _, _ = _loss_and_grads(params, whole, loss_fn, blocked_cfg)
  assert abs(float(loss_c) - float(loss_a)) > 1e-4


def test_packing_raises_slot_efficiency():
  """The trainer's `*_slot_efficiency` metrics: packing fills the rows."""
  padded = model_lib.slot_efficiency(_all_rows('paired', feature_converters
                                               .PairedEncDecFeatureConverter, False))
  packed = model_lib.slot_efficiency(_all_rows('paired', feature_converters
                                               .PairedEncDecFeatureConverter, True))
  for side in ('encoder', 'decoder'):
    assert float(packed[f'{side}_slot_efficiency']) > float(padded[f'{side}_slot_efficiency'])


def _train_metrics(gin_file, bindings):
  import gin  # pylint: disable=g-import-not-at-top
  from distill_sbs.experiments import runs as runs_lib  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import gin_utils  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import train_loop  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_utils.parse_gin([gin_file], bindings)
    gin.get_configurable(train_loop.train)()
    model_dir = gin_utils.query_model_dir()
  finally:
    gin.clear_config()
  return runs_lib.read_metrics(f'{model_dir}/metrics.jsonl')


def test_step_by_step_run_logs_slot_efficiency(sbs_data_dir, tmp_path, monkeypatch):
  """gin/sbs/cqa_tiny.gin packs by default; metrics.jsonl logs the fraction of
  real encoder / decoder slots, far above the padded layout's."""
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(sbs_data_dir))
  common = ['TRAIN_STEPS = 2', 'BATCH_SIZE = 8', 'LOG_PERIOD = 1', 'EVAL_PERIOD = 0',
            'CHECKPOINT_PERIOD = 2']
  packed = _train_metrics('gin/sbs/cqa_tiny.gin', [f"MODEL_DIR = '{tmp_path / 'p'}'", *common])
  padded = _train_metrics('gin/sbs/cqa_tiny.gin', [f"MODEL_DIR = '{tmp_path / 'u'}'",
                                                   'PACK = False', *common])
  for rows in (packed, padded):
    assert [r['step'] for r in rows if 'loss' in r] == [1, 2]
  for side in ('encoder', 'decoder'):
    p = [r[f'{side}_slot_efficiency'] for r in packed if 'loss' in r]
    u = [r[f'{side}_slot_efficiency'] for r in padded if 'loss' in r]
    assert min(p) > 0.8 and max(u) < 0.6, (side, p, u)


def test_input_pipeline_packs_in_the_models_blocks():
  """The converter takes the model's `encoder_block_length` when packing; a
  converter that cannot pack in blocks is refused by name."""
  from distill_sbs.training import input_pipeline  # pylint: disable=g-import-not-at-top
  model = model_lib.EncoderDecoderModel.__new__(model_lib.EncoderDecoderModel)
  model.module = Transformer(CFG.replace(encoder_block_length=12))
  model.FEATURE_CONVERTER_CLS = None

  def cfg(pack, cls=feature_converters.PairedEncDecFeatureConverter):
    return input_pipeline.DatasetConfig('t', LENGTHS, pack=pack, feature_converter_cls=cls)
  assert input_pipeline.feature_converter(cfg(True), model).encoder_block_length == 12
  assert input_pipeline.feature_converter(cfg(False), model).encoder_block_length == 0
  with pytest.raises(ValueError, match='encoder_block_length=12 needs a converter that '
                                       'packs in blocks.*EncDecFeatureConverter does not'):
    input_pipeline.feature_converter(cfg(True, seqio.EncDecFeatureConverter), model)
  # Rows of at most one block are whole rows (and the model attends over them).
  model.module = Transformer(CFG.replace(encoder_block_length=LENGTHS['inputs']))
  assert input_pipeline.feature_converter(cfg(True), model).encoder_block_length == 0
  model.module = Transformer(CFG.replace(encoder_block_length=10))
  with pytest.raises(ValueError, match=r"encoder_block_length=10 \(ENCODER_BLOCK_LENGTH.*"
                                       r"does not divide the packed inputs length 24"):
    input_pipeline.feature_converter(cfg(True), model)
