"""Decoder-only network vs transformers' PyTorch Llama / Qwen2 / Qwen3 / Gemma 3
on tiny random configs: logits, greedy decoding, checkpoint import / export."""
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from distill_sbs import models
from tests.models.decoder_only_helpers import KINDS, build_hf, hf_logits, ragged_batch


@pytest.fixture(scope='module', params=sorted(KINDS))
def hf_lm(request, tmp_path_factory):
  """(kind, directory, model) of a saved tiny HF causal LM."""
  model = build_hf(request.param)
  path = tmp_path_factory.mktemp(f'hf_{request.param}')
  model.save_pretrained(path, safe_serialization=True)
  return request.param, path, model


def our_logits(config, params, tokens, **kwargs):
  return np.asarray(models.DecoderOnlyTransformer(config).apply(
      {'params': params}, tokens, tokens, enable_dropout=False, **kwargs))


def test_load_config(hf_lm):
  kind, path, _ = hf_lm
  config, params = models.load_hf_checkpoint(path)
  assert isinstance(config, models.DecoderOnlyConfig)
  assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim) == (32, 4, 8, 48)
  assert config.model_type == json.load(open(os.path.join(path, 'config.json')))['model_type']
  assert (config.pad_id, config.eos_ids, config.bos_id) == (0, (1,), 2)
  dec = params['decoder']
  assert ('logits_dense' in dec) == (not config.logits_via_embedding)
  attn = dec['layers_0']['self_attention']
  if kind == 'llama_gqa_llama3':
    assert config.num_kv_heads == 2 and not config.logits_via_embedding
    assert (config.rope_type, config.rope_factor, config.rope_theta) == ('llama3', 8.0, 500.0)
    assert attn['key']['kernel'].shape == (32, 16)
  if kind == 'llama_tied_bias':
    assert config.logits_via_embedding and config.qkv_bias and config.out_bias
    assert 'bias' in attn['out']
  if kind == 'qwen2':
    assert config.qkv_bias and not config.out_bias and 'bias' in attn['value']
  if kind == 'qwen3':
    assert config.qk_norm and attn['query_norm']['scale'].shape == (8,)
  if kind == 'gemma3':
    assert config.norm_plus_one and config.post_norms and config.scale_embeddings
    assert config.mlp_activation == 'gelu' and config.query_pre_attn_scalar == 12
    assert config.sliding_window == 5 and config.num_kv_heads == 1
    assert (config.rope_theta, config.rope_local_theta) == (1000.0, 50.0)
    assert config.layer_types == ('sliding_attention', 'full_attention', 'sliding_attention')
    assert 'post_mlp_layer_norm' in dec['layers_2']


def test_logits_match_transformers_ragged_batch(hf_lm):
  _, path, model = hf_lm
  config, params = models.load_hf_checkpoint(path)
  tokens, lengths = ragged_batch(length=13)  # rows of 13, 10, 7 tokens (> window 5)
  ours, ref = our_logits(config, params, tokens), hf_logits(model, tokens, lengths)
  real = np.arange(tokens.shape[1])[None] < lengths[:, None]
  np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=1e-4)
  assert ref[real].std(axis=-1).min() > 0.3  # not a trivially flat model


def test_sliding_window_and_rope_scaling_matter(hf_lm):
  """The parity above would catch a missing window / scaling: they change logits."""
  kind, path, _ = hf_lm
  config, params = models.load_hf_checkpoint(path)
  tokens, _ = ragged_batch(length=13)
  if kind == 'gemma3':
    other = config.replace(layer_types=('full_attention',) * 3)
  elif kind == 'llama_gqa_llama3':
    other = config.replace(rope_type='default')
  else:  # the other configs have neither, so the parity test covers them as they are
    assert config.rope_type == 'default' and 'sliding_attention' not in config.layer_types
    return
  diff = np.abs(our_logits(config, params, tokens) - our_logits(other, params, tokens))
  assert diff.max() > 1e-2


def hf_greedy(model, tokens, lengths, max_new, eos, pad):
  """HF `generate(do_sample=False)` row by row; [batch, max_new] padded with pad."""
  rows = []
  for row, n in zip(tokens, lengths):
    with torch.no_grad():
      out = model.generate(input_ids=torch.tensor(row[None, :n], dtype=torch.long),
                           attention_mask=torch.ones((1, int(n)), dtype=torch.long),
                           do_sample=False, num_beams=1, max_new_tokens=max_new,
                           min_new_tokens=0, eos_token_id=eos, pad_token_id=pad,
                           top_k=None, top_p=None, temperature=None)
    new = out.numpy()[0, n:]
    rows.append(np.pad(new, (0, max_new - len(new)), constant_values=pad))
  return np.stack(rows)


def test_greedy_matches_transformers_generate(hf_lm):
  _, path, model = hf_lm
  config, params = models.load_hf_checkpoint(path)
  tokens, lengths = ragged_batch(seed=3, length=9)  # rows of 9, 6, 3 tokens
  max_new = 8
  # EOS := a token the first row emits at step 3, so some rows end early.
  probe, _ = models.generate(config.replace(eos_ids=(VOCAB_SENTINEL,)), params, tokens,
                             max_decode_length=max_new, prompt_lengths=lengths)
  eos = int(np.asarray(probe)[0, 3])
  config = config.replace(eos_ids=(eos,))
  ours, log_probs = models.generate(config, params, tokens, max_decode_length=max_new,
                                    prompt_lengths=lengths)
  ref = hf_greedy(model, tokens, lengths, max_new, eos, config.pad_id)
  np.testing.assert_array_equal(np.asarray(ours), ref)
  assert (ref == eos).any(axis=1)[0] and (ref[0, 4:] == config.pad_id).all()
  # log-probs: teacher-forced HF scores of the generated tokens (up to EOS).
  for i, n in enumerate(lengths):
    seq = np.concatenate([tokens[i, :n], ref[i]])
    with torch.no_grad():
      lp = torch.log_softmax(model(torch.tensor(seq[None], dtype=torch.long)).logits[0],
                             -1).numpy()
    stop = np.argmax(ref[i] == eos) + 1 if (ref[i] == eos).any() else max_new
    want = sum(lp[n - 1 + t, ref[i, t]] for t in range(stop))
    np.testing.assert_allclose(float(log_probs[i]), want, atol=1e-3)


VOCAB_SENTINEL = 10 ** 6  # an id no model emits


def test_beam_search_matches_transformers(hf_lm):
  """Without EOS and length penalty both keep the same top beams."""
  _, path, model = hf_lm
  config, params = models.load_hf_checkpoint(path)
  config = config.replace(eos_ids=(VOCAB_SENTINEL,))
  tokens, lengths = ragged_batch(seed=4, length=7)
  seqs, _ = models.generate(config, params, tokens, max_decode_length=5,
                            prompt_lengths=lengths, method='beam', num_beams=3, alpha=0.0)
  model.generation_config.eos_token_id = None
  for i, n in enumerate(lengths):
    with torch.no_grad():
      out = model.generate(input_ids=torch.tensor(tokens[i:i + 1, :n], dtype=torch.long),
                           attention_mask=torch.ones((1, int(n)), dtype=torch.long),
                           do_sample=False, num_beams=3, max_new_tokens=5, min_new_tokens=5,
                           length_penalty=0.0, eos_token_id=None, pad_token_id=0,
                           top_k=None, top_p=None, temperature=None)
    np.testing.assert_array_equal(np.asarray(seqs[i]), out.numpy()[0, n:])


def test_export_round_trip_gives_identical_hf_logits(hf_lm, tmp_path):
  kind, path, model = hf_lm
  config, params = models.load_hf_checkpoint(path)
  models.save_hf_checkpoint(tmp_path, config, params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, attn_implementation='eager').eval()
  assert type(reloaded) is type(model)
  tied = reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
  assert tied == config.logits_via_embedding
  tokens, lengths = ragged_batch(seed=1)
  np.testing.assert_array_equal(hf_logits(reloaded, tokens, lengths),
                                hf_logits(model, tokens, lengths))
  config2, params2 = models.load_hf_checkpoint(tmp_path)
  assert config2 == config
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
    np.testing.assert_array_equal(a, b)


def test_sharded_safetensors_index(tmp_path):
  model = build_hf('qwen3')
  model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size='20KB')
  assert os.path.exists(tmp_path / 'model.safetensors.index.json')
  config, params = models.load_hf_checkpoint(tmp_path)
  tokens, lengths = ragged_batch(seed=2)
  real = np.arange(tokens.shape[1])[None] < lengths[:, None]
  np.testing.assert_allclose(our_logits(config, params, tokens)[real],
                             hf_logits(model, tokens, lengths)[real], atol=1e-4, rtol=1e-4)


def test_pickle_only_directory_is_refused(tmp_path):
  model = build_hf('llama_tied_bias')
  model.config.save_pretrained(tmp_path)
  torch.save(model.state_dict(), tmp_path / 'pytorch_model.bin')
  with pytest.raises(ValueError, match='pickled'):
    models.load_hf_checkpoint(tmp_path)


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
  model = build_hf('gemma3').to(torch.bfloat16)
  model.save_pretrained(tmp_path, safe_serialization=True)
  config, params = models.load_hf_checkpoint(tmp_path)
  emb = params['decoder']['token_embedder']['embedding']
  assert emb.dtype == np.float32
  np.testing.assert_array_equal(emb, model.model.embed_tokens.weight.float().detach().numpy())
