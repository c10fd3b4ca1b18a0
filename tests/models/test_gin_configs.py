"""Every model gin file parses for real and builds the right `T5Config`."""
import pathlib

import gin
import pytest

from distill_sbs import models

REPO = pathlib.Path(__file__).resolve().parents[2]
V11 = ('gelu', 'linear')
# file: (vocab, dtype, emb, heads, enc, dec, head_dim, mlp, activations, tied)
SIZES = {
    't5_1_1/tiny': (384, 'float32', 64, 4, 2, 2, 16, 128, V11, False),
    't5_1_1/small': (32128, 'bfloat16', 512, 6, 8, 8, 64, 1024, V11, False),
    't5_1_1/base': (32128, 'bfloat16', 768, 12, 12, 12, 64, 2048, V11, False),
    't5_1_1/large': (32128, 'bfloat16', 1024, 16, 24, 24, 64, 2816, V11, False),
    't5_1_1/xl': (32128, 'bfloat16', 2048, 32, 24, 24, 64, 5120, V11, False),
    't5_1_1/xxl': (32128, 'bfloat16', 4096, 64, 24, 24, 64, 10240, V11, False),
    'flan_t5/small': (32128, 'bfloat16', 512, 6, 8, 8, 64, 1024, V11, False),
    'flan_t5/base': (32128, 'bfloat16', 768, 12, 12, 12, 64, 2048, V11, False),
    'flan_t5/large': (32128, 'bfloat16', 1024, 16, 24, 24, 64, 2816, V11, False),
    'flan_t5/xl': (32128, 'bfloat16', 2048, 32, 24, 24, 64, 5120, V11, False),
    'flan_t5/xxl': (32128, 'bfloat16', 4096, 64, 24, 24, 64, 10240, V11, False),
    't5/small': (32128, 'bfloat16', 512, 8, 6, 6, 64, 2048, ('relu',), True),
    't5/base': (32128, 'bfloat16', 768, 12, 12, 12, 64, 3072, ('relu',), True),
    't5/large': (32128, 'bfloat16', 1024, 16, 24, 24, 64, 4096, ('relu',), True),
}

# decoder-only file: (model_type, vocab, emb, heads, kv heads, layers, head_dim, mlp,
#                     activation, tied, sliding layers)
DECODER_ONLY_SIZES = {
    'llama/tiny': ('llama', 384, 64, 4, 2, 2, 16, 128, 'silu', True, 0),
    'qwen3/tiny': ('qwen3', 384, 64, 4, 2, 2, 16, 128, 'silu', True, 0),
    'gemma3/tiny': ('gemma3_text', 384, 64, 4, 1, 3, 16, 128, 'gelu', True, 2),
}


def test_every_model_file_is_covered():
  files = {str(p.relative_to(REPO / 't5x_configs/models'))[:-4]
           for p in (REPO / 't5x_configs/models').rglob('*.gin')}
  assert files == set(SIZES) | set(DECODER_ONLY_SIZES)


@pytest.mark.parametrize('name', sorted(SIZES))
def test_model_gin_builds_config_and_model(name):
  from distill_sbs.training import model as training_model
  gin.clear_config()
  gin.add_config_file_search_path(str(REPO))
  try:
    gin.parse_config_files_and_bindings([f't5x_configs/models/{name}.gin'],
                                        ['DROPOUT_RATE = 0.1'])
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    assert isinstance(model, training_model.EncoderDecoderModel)
    assert isinstance(model.module, models.Transformer)
    cfg = model.module.config
    got = (cfg.vocab_size, cfg.dtype, cfg.emb_dim, cfg.num_heads, cfg.num_encoder_layers,
           cfg.num_decoder_layers, cfg.head_dim, cfg.mlp_dim, cfg.mlp_activations,
           cfg.logits_via_embedding)
    assert got == SIZES[name]
    assert cfg.dropout_rate == 0.1 and cfg.param_dtype == 'float32'
    assert cfg.relative_attention_num_buckets == 32
    assert model.input_vocabulary.vocab_size <= cfg.vocab_size
  finally:
    gin.clear_config()


@pytest.mark.parametrize('name', sorted(DECODER_ONLY_SIZES))
def test_decoder_only_gin_builds_network(name):
  import jax
  import jax.numpy as jnp
  gin.clear_config()
  gin.add_config_file_search_path(str(REPO))
  try:
    gin.parse_config_files_and_bindings([f't5x_configs/models/{name}.gin'],
                                        ['DROPOUT_RATE = 0.1'])
    net = gin.query_parameter('%NETWORK').scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(net, models.DecoderOnlyTransformer)
  cfg = net.config
  got = (cfg.model_type, cfg.vocab_size, cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads,
         cfg.num_layers, cfg.head_dim, cfg.mlp_dim, cfg.mlp_activation,
         cfg.logits_via_embedding, sum(map(cfg.is_sliding, range(cfg.num_layers))))
  assert got == DECODER_ONLY_SIZES[name]
  assert cfg.dropout_rate == 0.1 and cfg.dtype == 'float32'
  x = jnp.ones((1, 4), jnp.int32)
  out = jax.eval_shape(lambda: net.init_with_output(
      jax.random.PRNGKey(0), x, x, enable_dropout=False)[0])
  assert out.shape == (1, 4, cfg.vocab_size)
