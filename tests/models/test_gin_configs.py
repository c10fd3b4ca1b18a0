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
    'llama/3_2_1b': ('llama', 128256, 2048, 32, 8, 16, 64, 8192, 'silu', True, 0),
    'qwen3/0_6b': ('qwen3', 151936, 1024, 16, 8, 28, 128, 3072, 'silu', True, 0),
    'gemma3/270m': ('gemma3_text', 262144, 640, 4, 1, 18, 256, 2048, 'gelu', True, 15),
}
# The public checkpoints' config.json fields the real-shape gins must agree with.
PUBLIC_CONFIGS = {
    'llama/3_2_1b': dict(
        model_type='llama', vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        hidden_act='silu', rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                          original_max_position_embeddings=8192, rope_type='llama3'),
        tie_word_embeddings=True, max_position_embeddings=131072, bos_token_id=128000,
        eos_token_id=128001, attention_bias=False, mlp_bias=False),
    'qwen3/0_6b': dict(
        model_type='qwen3', vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        hidden_act='silu', rms_norm_eps=1e-6, rope_theta=1000000, rope_scaling=None,
        sliding_window=None, use_sliding_window=False, tie_word_embeddings=True,
        max_position_embeddings=40960, bos_token_id=151643, eos_token_id=151645,
        attention_bias=False),
    'gemma3/270m': dict(
        model_type='gemma3_text', vocab_size=262144, hidden_size=640,
        intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, hidden_activation='gelu_pytorch_tanh',
        rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
        rope_scaling=None, sliding_window=512, query_pre_attn_scalar=256,
        max_position_embeddings=32768, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        attention_bias=False, final_logit_softcapping=None, attn_logit_softcapping=None,
        layer_types=['full_attention' if (i + 1) % 6 == 0 else 'sliding_attention'
                     for i in range(18)]),
}


def test_every_model_file_is_covered():
  files = {str(p.relative_to(REPO / 't5x_configs/models'))[:-4]
           for p in (REPO / 't5x_configs/models').rglob('*.gin')}
  assert files == set(SIZES) | set(DECODER_ONLY_SIZES)


def _build(name: str, macro: str):
  """Parses `t5x_configs/models/{name}.gin` (dropout 0.1) and builds `%macro`."""
  gin.clear_config()
  gin.add_config_file_search_path(str(REPO))
  gin.parse_config_files_and_bindings([f't5x_configs/models/{name}.gin'],
                                      ['DROPOUT_RATE = 0.1'])
  return gin.query_parameter(f'%{macro}').scoped_configurable_fn()


@pytest.mark.parametrize('name', sorted(SIZES))
def test_model_gin_builds_config_and_model(name):
  from distill_sbs.training import model as training_model
  try:
    model = _build(name, 'MODEL')
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
  try:
    net = _build(name, 'NETWORK')
  finally:
    gin.clear_config()
  assert isinstance(net, models.DecoderOnlyTransformer)
  cfg = net.config
  got = (cfg.model_type, cfg.vocab_size, cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads,
         cfg.num_layers, cfg.head_dim, cfg.mlp_dim, cfg.mlp_activation,
         cfg.logits_via_embedding, sum(map(cfg.is_sliding, range(cfg.num_layers))))
  assert got == DECODER_ONLY_SIZES[name]
  assert cfg.dropout_rate == 0.1 and cfg.param_dtype == 'float32'
  assert cfg.dtype == ('float32' if name.endswith('tiny') else 'bfloat16')
  if name in PUBLIC_CONFIGS:  # what load_hf_checkpoint reads from the real config.json
    from distill_sbs.models import decoder_only_hf
    want = decoder_only_hf.config_from_hf(PUBLIC_CONFIGS[name])
    assert cfg.replace(dtype='float32', dropout_rate=0.0) == want
  x = jnp.ones((1, 4), jnp.int32)
  out = jax.eval_shape(lambda: net.init_with_output(
      jax.random.PRNGKey(0), x, x, enable_dropout=False)[0])
  assert out.shape == (1, 4, cfg.vocab_size)
