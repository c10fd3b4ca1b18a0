"""Our network vs transformers' PyTorch T5 on the same random weights."""
import numpy as np
import pytest
import torch

from distill_sbs import models
from tests.models.helpers import padded_batch, shift_right


def hf_logits(model, inputs, targets):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(inputs, dtype=torch.long),
                attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(shift_right(targets), dtype=torch.long),
                decoder_attention_mask=torch.tensor(targets > 0, dtype=torch.long))
  return out.logits.numpy()


def our_logits(config, params, inputs, targets):
  return np.asarray(models.Transformer(config).apply(
      {'params': params}, inputs, shift_right(targets), targets, enable_dropout=False))


def test_load_config(hf_dir):
  kind, path, _ = hf_dir
  config, params = models.load_hf_checkpoint(path)
  assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim) == (32, 4, 8, 48)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
  assert config.relative_attention_num_buckets == 8
  assert config.relative_attention_max_distance == 20
  if kind == 'v1_1':
    assert config.mlp_activations == ('gelu', 'linear')
    assert not config.logits_via_embedding
    assert params['decoder']['logits_dense']['kernel'].shape == (32, 101)
    assert 'wi_1' in params['encoder']['layers_0']['mlp']
  else:
    assert config.mlp_activations == ('relu',)
    assert config.logits_via_embedding
    assert 'logits_dense' not in params['decoder']
    assert 'wi' in params['encoder']['layers_1']['mlp']


def test_logits_match_transformers(hf_dir):
  _, path, model = hf_dir
  config, params = models.load_hf_checkpoint(path)
  inputs, targets = padded_batch()
  ours, ref = our_logits(config, params, inputs, targets), hf_logits(model, inputs, targets)
  real = targets > 0
  assert real.sum() > 40
  np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=1e-4)
  assert ref[real].std(axis=-1).min() > 0.05  # not a trivially flat model


def test_save_round_trip_gives_identical_hf_logits(hf_dir, tmp_path):
  kind, path, model = hf_dir
  import transformers
  config, params = models.load_hf_checkpoint(path)
  models.save_hf_checkpoint(tmp_path, config, params)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
  tied = reloaded.lm_head.weight.data_ptr() == reloaded.shared.weight.data_ptr()
  assert tied == (kind == 't5')
  inputs, targets = padded_batch(seed=1)
  np.testing.assert_array_equal(hf_logits(reloaded, inputs, targets),
                                hf_logits(model, inputs, targets))
  config2, params2 = models.load_hf_checkpoint(tmp_path)
  assert config2 == config
  for a, b in zip(jax_leaves(params), jax_leaves(params2)):
    np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
  import jax
  return jax.tree_util.tree_leaves(tree)


def test_greedy_matches_transformers_generate(hf_dir):
  _, path, model = hf_dir
  config, params = models.load_hf_checkpoint(path)
  inputs, _ = padded_batch(seed=2, batch=4)
  tokens, log_probs = models.generate(config, params, inputs, max_decode_length=10)
  with torch.no_grad():
    # use_cache=False: transformers' cache assumes num_decoder_layers == num_layers.
    ref = model.generate(input_ids=torch.tensor(inputs, dtype=torch.long),
                         attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
                         do_sample=False, num_beams=1, max_new_tokens=10,
                         use_cache=False).numpy()[:, 1:]  # drop the start token
  ref = np.pad(ref, ((0, 0), (0, 10 - ref.shape[1])))  # HF pads finished rows with 0
  np.testing.assert_array_equal(np.asarray(tokens), ref)
  # HF's per-token scores of its own output sum to our sequence log-probs.
  np.testing.assert_allclose(
      np.asarray(models.score(config, params, inputs, ref)).sum(-1), log_probs, atol=1e-4)
