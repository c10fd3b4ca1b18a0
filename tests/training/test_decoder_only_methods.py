"""Every method part composes with a decoder-only model gin (qwen3 tiny + CPU
run + method + cqa) without a decoder-only copy of the method: the model maps
the method's converter to its decoder-only twin, and one real training batch
gives a finite loss through `DecoderOnlyModel.loss_fn`."""
import gin
import jax
import numpy as np
import pytest

from distill_sbs.data import decoder_only_converters as doc
from distill_sbs.experiments import methods as methods_lib
from distill_sbs.training import decoder_only_model
from distill_sbs.training import gin_utils
from distill_sbs.training import input_pipeline
from test_run_gin_configs import K, _write_first_records

MODEL_GIN = 't5x_configs/models/qwen3/tiny.gin'
LENGTHS = ['INPUTS_LENGTH = 96', 'LABEL_LENGTH = 16', 'RATIONALE_LENGTH = 48']
CONVERTER = {'first': doc.DecoderOnlyTopKFeatureConverter,
             'first_cross_tokenizer': doc.DecoderOnlyTopKFeatureConverter,
             'first_rationale': doc.DecoderOnlyTopKFeatureConverter,
             'sbs_llm': doc.DecoderOnlyPairedFeatureConverter,
             'sbs_gold': doc.DecoderOnlyPairedFeatureConverter}


@gin.configurable
def _decoder_only_probe(model=None, train_cfg=None):
  return model, train_cfg


@pytest.fixture(scope='module')
def data_dir(sbs_data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp('decoder_only_data')
  _write_first_records(sbs_data_dir, root)
  return root


@pytest.mark.parametrize('method', sorted(methods_lib.METHODS))
def test_method_trains_a_decoder_only_student(method, data_dir, monkeypatch):
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(data_dir))
  gin.clear_config()
  try:
    gin_utils.parse_gin(
        [MODEL_GIN, 'gin/runs/cpu.gin', f'gin/methods/{method}.gin', 'gin/datasets/cqa.gin'],
        # Padded rows: a batch of 4 holds label and rationale rows (packed rows
        # come fullest first); packing is checked in test_decoder_only_converters.
        ["MODEL_DIR = '/tmp/x'", 'BATCH_SIZE = 4', 'PACK = False', *LENGTHS,
         '_decoder_only_probe.model = %MODEL',
         '_decoder_only_probe.train_cfg = @train/input_pipeline.DatasetConfig()'])
    model, cfg = _decoder_only_probe()
    converter = input_pipeline.feature_converter(cfg, model)
    batch = next(iter(input_pipeline.get_dataset(cfg, model).as_numpy_iterator()))
  finally:
    gin.clear_config()
  assert isinstance(model, decoder_only_model.DecoderOnlyModel)
  assert type(converter) is CONVERTER.get(method, doc.DecoderOnlyFeatureConverter)
  n = cfg.task_feature_lengths['inputs'] + cfg.task_feature_lengths['targets']
  assert batch['decoder_input_tokens'].shape == (4, n)
  assert 'encoder_input_tokens' not in batch
  w = batch['decoder_loss_weights'] > 0
  assert w.any(axis=1).all() and (batch['decoder_segment_ids'][w] > 0).all()
  if method.startswith('first'):
    assert batch['decoder_topk_ids'].shape == (4, n, K)
    assert (batch['decoder_topk_logprobs'][w] < 0).any(axis=-1).all()
    assert not batch['decoder_topk_logprobs'][~w].any()
  if method.startswith('sbs'):
    assert set(np.unique(batch['decoder_task_ids'][w])) == {0, 1}
  params = jax.tree_util.tree_map(
      lambda v: v.unbox() if hasattr(v, 'unbox') else v,
      model.get_initial_variables(jax.random.PRNGKey(0), {'decoder_input_tokens': (1, 4)})[
          'params'], is_leaf=lambda v: hasattr(v, 'unbox'))
  loss, metrics = jax.jit(lambda p, b: model.loss_fn(p, b, None))(params, batch)
  assert np.isfinite(float(loss)) and 3 < float(loss) < 10
  assert float(metrics['real_tokens']) == w.sum()


@pytest.mark.parametrize('name', ['llama/tiny', 'llama/3_2_1b', 'qwen3/tiny', 'qwen3/0_6b',
                                  'gemma3/tiny', 'gemma3/270m'])
def test_every_decoder_only_model_gin_binds_model(name):
  from distill_sbs import models  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_utils.parse_gin([f't5x_configs/models/{name}.gin'], [], check_required=False)
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    net = gin.query_parameter('%NETWORK').scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(model, decoder_only_model.DecoderOnlyModel)
  assert isinstance(model.module, models.DecoderOnlyTransformer)
  assert model.config == net.config
  assert model.FEATURE_CONVERTER_CLS is doc.DecoderOnlyFeatureConverter
  assert model.input_vocabulary is not None and model.max_decode_length is None


def test_ul2r_decoder_only_gin_gives_prefix_lm_rows(sbs_data_dir, monkeypatch):
  """gin/ul2r/cqa_corpus_qwen3_tiny.gin: UL2R rows with a bidirectional prefix
  (the inputs, mode token first) through the decoder-only label converter."""
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(sbs_data_dir))
  gin.clear_config()
  try:
    gin_utils.parse_gin(['gin/ul2r/cqa_corpus_qwen3_tiny.gin'], [
        'BATCH_SIZE = 4', "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 32}",
        '_decoder_only_probe.model = %MODEL',
        '_decoder_only_probe.train_cfg = @train/input_pipeline.DatasetConfig()'])
    model, cfg = _decoder_only_probe()
    converter = input_pipeline.feature_converter(cfg, model)
    batch = next(iter(input_pipeline.get_dataset(cfg, model).as_numpy_iterator()))
  finally:
    gin.clear_config()
  assert type(converter) is doc.DecoderOnlyFeatureConverter and converter.prefix_lm
  causal, w = batch['decoder_causal_attention'] > 0, batch['decoder_loss_weights'] > 0
  assert batch['decoder_input_tokens'].shape == (4, 96)
  assert causal.any() and w.any()
  # The prefix ends where the loss begins: the last prefix position predicts
  # the first target, nothing else overlaps.
  assert not (causal & w & np.roll(w, 1, axis=1)).any()
  assert ((causal & w).sum(axis=1) == batch['decoder_segment_ids'].max(axis=1)).all()
