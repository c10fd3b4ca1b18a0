"""Decoder-only network properties without transformers: KV-cache decoding vs
full recomputation, packing, prefix-LM masks, partition specs, dtypes, remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from distill_sbs import models

GEMMA = models.DecoderOnlyConfig(
    model_type='gemma3_text', vocab_size=61, emb_dim=32, num_heads=4, num_kv_heads=2,
    num_layers=3, head_dim=8, mlp_dim=48, mlp_activation='gelu', norm_plus_one=True,
    post_norms=True, qk_norm=True, scale_embeddings=True, query_pre_attn_scalar=12,
    rope_theta=1000.0, rope_local_theta=50.0, sliding_window=4,
    layer_types=('sliding_attention', 'full_attention', 'sliding_attention'),
    pad_id=0, eos_ids=(1,))
LLAMA = models.DecoderOnlyConfig(
    model_type='llama', vocab_size=61, emb_dim=32, num_heads=4, num_kv_heads=1,
    num_layers=2, head_dim=8, mlp_dim=48, rope_type='llama3', rope_theta=500.0,
    rope_factor=8.0, rope_original_max_position_embeddings=16, logits_via_embedding=False,
    qkv_bias=True, pad_id=3, eos_ids=(1, 2))
CONFIGS = {'gemma3': GEMMA, 'llama': LLAMA}


def random_params(config, seed=0):
  """float32 params from the `jax.eval_shape` tree filled by numpy."""
  x = jnp.ones((1, 3), jnp.int32)
  shapes = jax.eval_shape(lambda: models.DecoderOnlyTransformer(config).init(
      jax.random.PRNGKey(0), x, x, enable_dropout=False))
  shapes = nn.meta.unbox(shapes)['params']
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    base = 0.0 if 'scale' not in name or config.norm_plus_one else 1.0
    std = 0.1 if 'scale' in name else 0.3
    return (base + std * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def logits(config, params, tokens, **kwargs):
  return np.asarray(models.DecoderOnlyTransformer(config).apply(
      {'params': params}, jnp.asarray(tokens), None, enable_dropout=False, **kwargs))


@pytest.fixture(params=sorted(CONFIGS))
def model(request):
  config = CONFIGS[request.param]
  return config, random_params(config)


def test_kv_cache_decoding_equals_full_recomputation(model):
  config, params = model
  rng = np.random.default_rng(0)
  prompts = rng.integers(4, config.vocab_size, size=(3, 7)).astype(np.int32)
  lengths = np.array([7, 2, 5], np.int32)
  # No EOS: every row decodes all steps.
  cfg = config.replace(eos_ids=(10 ** 6,))
  tokens, logp = models.generate(cfg, params, prompts, max_decode_length=9,
                                 prompt_lengths=lengths)
  tokens = np.asarray(tokens)
  for i, n in enumerate(lengths):
    seq = np.concatenate([prompts[i, :n], tokens[i]])[None]
    lp = jax.nn.log_softmax(logits(cfg, params, seq)[0])  # [n + 9, vocab]
    steps = lp[n - 1:n - 1 + 9]
    np.testing.assert_array_equal(np.argmax(steps, -1), tokens[i])
    want = np.take_along_axis(np.asarray(steps), tokens[i][:, None], -1).sum()
    np.testing.assert_allclose(float(logp[i]), want, atol=1e-4)


def test_eos_stops_rows_and_pads_with_pad_id(model):
  config, params = model
  prompts = np.random.default_rng(1).integers(4, config.vocab_size, (2, 5)).astype(np.int32)
  probe, _ = models.generate(config.replace(eos_ids=(10 ** 6,)), params, prompts,
                             max_decode_length=6, prompt_lengths=np.array([5, 3]))
  eos = int(np.asarray(probe)[1, 2])
  cfg = config.replace(eos_ids=(10 ** 6, eos))  # the second EOS id ends rows too
  tokens, _ = models.generate(cfg, params, prompts, max_decode_length=6,
                              prompt_lengths=np.array([5, 3]))
  tokens, probe = np.asarray(tokens), np.asarray(probe)
  stop = int(np.flatnonzero(probe[1] == eos)[0]) + 1
  np.testing.assert_array_equal(tokens[1, :stop], probe[1, :stop])
  assert (tokens[1, stop:] == config.pad_id).all()
  for row in tokens:
    hits = np.flatnonzero(row == eos)
    if hits.size:
      assert (row[hits[0] + 1:] == config.pad_id).all()


def test_sampling_is_seeded_and_topk1_is_greedy(model):
  config, params = model
  prompts = np.random.default_rng(2).integers(4, config.vocab_size, (2, 4)).astype(np.int32)
  kw = dict(max_decode_length=5, prompt_lengths=np.array([4, 2]))
  a = models.generate(config, params, prompts, method='sample', seed=3, **kw)[0]
  b = models.generate(config, params, prompts, method='sample', seed=3, **kw)[0]
  np.testing.assert_array_equal(a, b)
  greedy = models.generate(config, params, prompts, **kw)[0]
  top1 = models.generate(config, params, prompts, method='sample', topk=1, seed=5, **kw)[0]
  np.testing.assert_array_equal(greedy, top1)


def test_packed_equals_unpacked(model):
  config, params = model
  rng = np.random.default_rng(3)
  a = rng.integers(4, config.vocab_size, 7).astype(np.int32)
  b = rng.integers(4, config.vocab_size, 9).astype(np.int32)
  packed = np.zeros((1, 20), np.int32)
  packed[0, :7], packed[0, 7:16] = a, b
  segments = np.array([[1] * 7 + [2] * 9 + [0] * 4], np.int32)
  positions = np.array([list(range(7)) + list(range(9)) + [0] * 4], np.int32)
  out = logits(config, params, packed, decoder_segment_ids=segments,
               decoder_positions=positions)
  np.testing.assert_allclose(out[0, :7], logits(config, params, a[None])[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 7:16], logits(config, params, b[None])[0], atol=1e-5)


def test_prefix_lm_attention(model):
  config, params = model
  tokens = np.random.default_rng(4).integers(4, config.vocab_size, (1, 8)).astype(np.int32)
  prefix = np.array([[1, 1, 1, 0, 0, 0, 0, 0]], np.int32)
  changed = tokens.copy()
  changed[0, 2] = (changed[0, 2] + 1) % config.vocab_size
  base = logits(config, params, tokens, decoder_causal_attention=prefix)
  other = logits(config, params, changed, decoder_causal_attention=prefix)
  assert np.abs(base[0, 0] - other[0, 0]).max() > 1e-3  # position 0 sees the prefix
  causal = logits(config, params, tokens)
  np.testing.assert_allclose(logits(config, params, changed)[0, :2], causal[0, :2],
                             atol=1e-6)  # causal: position 0, 1 do not see position 2
  # Changing a target token leaves the prefix positions alone.
  later = tokens.copy()
  later[0, 6] = (later[0, 6] + 1) % config.vocab_size
  np.testing.assert_allclose(logits(config, params, later, decoder_causal_attention=prefix)
                             [0, :6], base[0, :6], atol=1e-6)


def test_every_parameter_has_a_partition_spec(model):
  config, _ = model
  x = jnp.ones((2, 5), jnp.int32)
  boxed = jax.eval_shape(lambda: models.DecoderOnlyTransformer(config).init(
      jax.random.PRNGKey(0), x, x, enable_dropout=False))['params']
  leaves = jax.tree_util.tree_leaves_with_path(
      boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert len(leaves) > 10
  allowed = {'embed', 'mlp', 'heads', 'kv', 'vocab', 'joined_kv'}
  for path, leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= allowed
  specs = nn.get_partition_spec(boxed)
  names = {jax.tree_util.keystr(p): s for p, s in
           jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda v: v is None or
                                               isinstance(v, jax.sharding.PartitionSpec))}
  key = [k for k in names if 'layers_0' in k and "'key'" in k and 'kernel' in k][0]
  assert tuple(names[key]) == ('embed', 'joined_kv')


def test_bfloat16_and_remat(model):
  config, params = model
  tokens = np.random.default_rng(5).integers(4, config.vocab_size, (2, 6)).astype(np.int32)
  ref = logits(config, params, tokens)
  np.testing.assert_allclose(logits(config.replace(remat_policy='full'), params, tokens),
                             ref, atol=1e-5)
  bf16 = config.replace(dtype='bfloat16', param_dtype='bfloat16')
  x = jnp.ones((1, 3), jnp.int32)
  init = models.DecoderOnlyTransformer(bf16).init(jax.random.PRNGKey(0), x, x,
                                                 enable_dropout=False)
  assert all(v.dtype == jnp.bfloat16 for v in jax.tree_util.tree_leaves(
      nn.meta.unbox(init)))
  out = logits(config.replace(dtype='bfloat16'), params, tokens)
  assert out.dtype == np.float32
  assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_dropout_needs_rng_and_changes_outputs(model):
  config, params = model
  cfg = config.replace(dropout_rate=0.3)
  tokens = jnp.ones((1, 5), jnp.int32) * 7
  net = models.DecoderOnlyTransformer(cfg)
  a = net.apply({'params': params}, tokens, None, enable_dropout=True,
                rngs={'dropout': jax.random.PRNGKey(1)})
  b = net.apply({'params': params}, tokens, None, enable_dropout=False)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_config_validation_and_generate_dispatch():
  with pytest.raises(ValueError, match='multiple'):
    LLAMA.replace(num_kv_heads=3)
  with pytest.raises(ValueError, match='sliding_window'):
    GEMMA.replace(sliding_window=None)
  with pytest.raises(ValueError, match='decoder-only'):
    models.generate(models.T5Config(vocab_size=8, emb_dim=8, num_heads=1, head_dim=8,
                                    mlp_dim=8, num_encoder_layers=1, num_decoder_layers=1),
                    {}, np.ones((1, 2), np.int32), max_decode_length=2,
                    prompt_lengths=np.array([2]))
  # return_topk reaches the decoder-only decoder (tested against topk_scores in
  # test_decoder_only_topk.py); beam search has none.
  tokens, _, ids, lps = models.generate(LLAMA, random_params(LLAMA),
                                        np.ones((1, 2), np.int32), max_decode_length=2,
                                        return_topk=2)
  assert tokens.shape == (1, 2) and ids.shape == lps.shape == (1, 2, 2)
  with pytest.raises(ValueError, match='return_topk'):
    models.generate(LLAMA, random_params(LLAMA), np.ones((1, 2), np.int32),
                    max_decode_length=2, return_topk=2, method='beam')


def test_beam_search(model):
  config, params = model
  prompts = np.random.default_rng(7).integers(4, config.vocab_size, (3, 6)).astype(np.int32)
  kw = dict(max_decode_length=6, prompt_lengths=np.array([6, 2, 4]))
  greedy, greedy_lp = models.generate(config, params, prompts, **kw)
  one, one_lp = models.generate(config, params, prompts, method='beam', num_beams=1,
                                alpha=0.0, **kw)
  np.testing.assert_array_equal(one, greedy)
  np.testing.assert_allclose(one_lp, greedy_lp, atol=1e-5)
  cfg = config.replace(eos_ids=(10 ** 6,))  # no EOS: full-length beams
  seqs, lps = models.generate(cfg, params, prompts, method='beam', num_beams=3,
                              return_all_beams=True, **kw)
  assert seqs.shape == (3, 3, 6) and lps.shape == (3, 3)
  assert (np.diff(np.asarray(lps), axis=1) <= 1e-6).all()
  for b in range(3):
    scores = models.score(cfg, params, prompts, seqs[:, b], prompt_lengths=kw['prompt_lengths'])
    np.testing.assert_allclose(np.asarray(scores).sum(-1), lps[:, b], atol=1e-4)
  g = models.generate(cfg, params, prompts, **kw)[1]
  assert (np.asarray(lps[:, 0]) >= np.asarray(g) - 1e-4).all()


def test_score_and_topk_match_generate(model):
  config, params = model
  prompts = np.random.default_rng(6).integers(4, config.vocab_size, (3, 6)).astype(np.int32)
  lengths = np.array([6, 1, 4], np.int32)
  cfg = config.replace(eos_ids=(10 ** 6,))
  tokens, logp = models.generate(cfg, params, prompts, max_decode_length=5,
                                 prompt_lengths=lengths)
  scores = np.asarray(models.score(cfg, params, prompts, tokens, prompt_lengths=lengths))
  np.testing.assert_allclose(scores.sum(-1), logp, atol=1e-4)
  ids, lps = models.topk_scores(cfg, params, prompts, tokens, 3, prompt_lengths=lengths,
                                target_lengths=np.array([5, 5, 2]))
  ids, lps = np.asarray(ids), np.asarray(lps)
  np.testing.assert_array_equal(ids[:, :, 0][:, :2], np.asarray(tokens)[:, :2])  # greedy
  np.testing.assert_allclose(lps[:, :2, 0], scores[:, :2], atol=1e-5)
  assert (ids[2, 2:] == 0).all() and (lps[2, 2:] == 0).all()
  assert (np.diff(lps[:2], axis=-1) <= 0).all()


def test_mesh_1_vs_8_devices_with_fewer_kv_heads_than_model_parallel(model):
  """T5X rules on a (data 2, model 4) mesh: kv heads (1 or 2) < model size 4.

  The 'heads' / 'joined_kv' axes then split the key / value projections inside
  a head (head_dim columns) and GSPMD pads or regathers the [.., kv_heads, ..]
  activations; logits and gradients equal the single-device ones.
  """
  from distill_sbs.training import partitioning
  config = model[0].replace(vocab_size=64)  # the vocabulary divides the mesh
  params = random_params(config)
  if jax.device_count() < 8:
    pytest.skip('needs 8 (host) devices')
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ('data', 'model'))
  rules = partitioning.standard_logical_axis_rules()
  x = jnp.ones((2, 5), jnp.int32)
  boxed = jax.eval_shape(lambda: models.DecoderOnlyTransformer(config).init(
      jax.random.PRNGKey(0), x, x, enable_dropout=False))['params']
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  tokens = np.random.default_rng(8).integers(4, config.vocab_size, (4, 12)).astype(np.int32)
  net = models.DecoderOnlyTransformer(config)

  def loss(p, t):
    out = net.apply({'params': p}, t, None, enable_dropout=False)
    return jnp.mean(jax.nn.logsumexp(out, -1)), out

  ref_grads, ref = jax.jit(jax.grad(loss, has_aux=True))(params, tokens)
  sharded = jax.device_put(params, shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    grads, out = jax.jit(jax.grad(loss, has_aux=True))(sharded, tokens)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  key = sharded['decoder']['layers_0']['self_attention']['key']['kernel']
  assert key.sharding.spec == jax.sharding.PartitionSpec(None, 'model')


def test_jax_attention_kernel_equals_einsum(model):
  config, params = model
  tokens = np.random.default_rng(9).integers(4, config.vocab_size, (2, 9)).astype(np.int32)
  fused = config.replace(attention_kernel='jax')
  segments = np.array([[1] * 4 + [2] * 5, [1] * 9], np.int32)
  prefix = np.array([[1, 1, 0, 0, 0, 0, 0, 0, 0]] * 2, np.int32)
  for kw in ({}, dict(decoder_segment_ids=segments), dict(decoder_causal_attention=prefix)):
    np.testing.assert_allclose(logits(fused, params, tokens, **kw),
                               logits(config, params, tokens, **kw), atol=1e-5)
  kw = dict(max_decode_length=4, prompt_lengths=np.array([9, 3]))
  np.testing.assert_array_equal(models.generate(fused, params, tokens, **kw)[0],
                                models.generate(config, params, tokens, **kw)[0])
