"""Helpers for the model tests: tiny random HF T5 models, batches, params."""
import numpy as np
import torch
import transformers

VOCAB = 101


def build_hf_t5(kind: str, seed: int = 0):
  """A tiny random `T5ForConditionalGeneration`: 'v1_1' (gated-GELU, untied)
  or 't5' (ReLU, tied embedding logits scaled by 1/sqrt(d_model))."""
  torch.manual_seed(seed)
  gated = kind == 'v1_1'
  cfg = transformers.T5Config(
      vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
      feed_forward_proj='gated-gelu' if gated else 'relu', dropout_rate=0.0,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
      tie_word_embeddings=not gated)
  # transformers 5.x forces tie_word_embeddings=True in __post_init__; untie
  # explicitly so lm_head is a separate matrix (as in t5-v1_1 / flan-t5).
  cfg.tie_word_embeddings = not gated
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():  # HF init makes near-constant logits; spread them
      p.copy_(torch.randn_like(p) * 0.2)
    for name, p in model.named_parameters():
      if 'layer_norm' in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
    # One token embedding for encoder, decoder (and the tied head).
    model.encoder.embed_tokens.weight = model.shared.weight
    model.decoder.embed_tokens.weight = model.shared.weight
    if not gated:
      model.lm_head.weight = model.shared.weight
    # Make EOS compete with one frequent token so greedy outputs end early in
    # some rows (the token was picked by looking at this seed's outputs).
    model.lm_head.weight[1] = 1.05 * model.lm_head.weight[4 if gated else 45]
  return model


def padded_batch(seed: int = 0, batch: int = 3, inp_len: int = 23, tgt_len: int = 19):
  """Random tokens in [2, VOCAB) with right padding of different lengths."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, VOCAB, size=(batch, inp_len)).astype(np.int32)
  targets = rng.integers(2, VOCAB, size=(batch, tgt_len)).astype(np.int32)
  for i in range(batch):
    inputs[i, inp_len - 5 * i:] = 0
    targets[i, tgt_len - 4 * i:] = 0
    targets[i, tgt_len - 4 * i - 1] = 1  # EOS before padding
  return inputs, targets


def shift_right(targets: np.ndarray) -> np.ndarray:
  out = np.zeros_like(targets)
  out[:, 1:] = targets[:, :-1]
  return out


def random_params(config, seed: int = 0, enc_len: int = 4, dec_len: int = 3):
  """Random float32 params for `config` without compiling initialisers:
  the tree comes from `jax.eval_shape(init)`, the values from numpy."""
  import jax
  import jax.numpy as jnp
  from flax import linen as nn
  from distill_sbs import models
  x = jnp.ones((1, enc_len), jnp.int32)
  y = jnp.ones((1, dec_len), jnp.int32)
  shapes = jax.eval_shape(lambda: models.Transformer(config).init(
      jax.random.PRNGKey(0), x, y, y, enable_dropout=False))
  shapes = nn.meta.unbox(shapes)['params']
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if 'scale' in name:
      return (1.0 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    return (0.3 * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)
