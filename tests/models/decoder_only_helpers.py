"""Tiny random transformers decoder-only LMs (Llama, Qwen2, Qwen3, Gemma 3 text)."""
import numpy as np
import torch
import transformers

VOCAB = 97
LLAMA3_ROPE = {'rope_type': 'llama3', 'rope_theta': 500.0, 'factor': 8.0,
               'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
               'original_max_position_embeddings': 16}
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_attention_heads=4,
              head_dim=8, pad_token_id=0, bos_token_id=2, eos_token_id=1,
              max_position_embeddings=64)

# kind: (model class, config class, extra config fields)
KINDS = {
    # grouped-query attention, untied head, Llama-3 rope scaling
    'llama_gqa_llama3': ('LlamaForCausalLM', 'LlamaConfig', dict(
        num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters=dict(LLAMA3_ROPE))),
    # multi-head attention, tied head, all-projection biases
    'llama_tied_bias': ('LlamaForCausalLM', 'LlamaConfig', dict(
        num_hidden_layers=2, num_key_value_heads=4, tie_word_embeddings=True,
        attention_bias=True)),
    'qwen2': ('Qwen2ForCausalLM', 'Qwen2Config', dict(
        num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=False)),
    'qwen3': ('Qwen3ForCausalLM', 'Qwen3Config', dict(
        num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True)),
    # sliding window 5 < sequence lengths, two RoPE bases, query_pre_attn_scalar
    'gemma3': ('Gemma3ForCausalLM', 'Gemma3TextConfig', dict(
        num_hidden_layers=3, num_key_value_heads=1, tie_word_embeddings=True,
        sliding_window=5, query_pre_attn_scalar=12,
        layer_types=['sliding_attention', 'full_attention', 'sliding_attention'],
        rope_parameters={'full_attention': {'rope_type': 'default', 'rope_theta': 1000.0},
                         'sliding_attention': {'rope_type': 'default',
                                               'rope_theta': 50.0}})),
}


def build_hf(kind: str, seed: int = 0):
  """A tiny random HF causal LM of `kind` (fp32, eager attention, eval mode)."""
  model_cls, config_cls, extra = KINDS[kind]
  torch.manual_seed(seed)
  cfg = getattr(transformers, config_cls)(**COMMON, **extra)
  cfg._attn_implementation = 'eager'  # pylint: disable=protected-access
  model = getattr(transformers, model_cls)(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.copy_((0.0 if kind == 'gemma3' else 1.0) + 0.1 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * 0.2)
  return model


def ragged_batch(seed: int = 0, batch: int = 3, length: int = 13):
  """Random tokens [batch, length] in [3, VOCAB) and lengths (row i shorter by 3i);
  positions past a row's length hold junk tokens."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, VOCAB, size=(batch, length)).astype(np.int32)
  lengths = np.array([length - 3 * i for i in range(batch)], np.int32)
  return tokens, lengths


def hf_logits(model, tokens, lengths=None):
  """HF logits of right-padded rows (attention mask from lengths)."""
  mask = np.ones_like(tokens)
  if lengths is not None:
    mask = (np.arange(tokens.shape[1])[None] < lengths[:, None]).astype(np.int64)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long))
  return out.logits.numpy()
