"""Decoder-only throughput: the project's JAX `DecoderOnlyTransformer` vs
transformers' PyTorch `Qwen3ForCausalLM` of the same shapes and weights.

  python benchmarks/decoder_only_throughput.py --sizes=tiny,qwen3_0_6b_like
      [--batch_size=4] [--inputs=128] [--targets=32] [--repeats=3]
      [--layers=N] [--vocab=V] [--dtype=float32] [--json=out.jsonl]

The PyTorch model is built with transformers' random init, saved as safetensors
and loaded with `models.load_hf_checkpoint`, so both run the same weights.

  * training step (jit on the JAX side): forward + backward + Adam update
    (optax.adam vs torch.optim.Adam, lr 1e-3) on random sequences of
    inputs + targets tokens, next-token cross-entropy on every position;
    tokens/s = batch × (inputs + targets). The first step's losses are printed
    (same weights, same batch: they agree to float32 rounding).
  * greedy decoding with a KV cache: prompts of `inputs` tokens, `targets` new
    tokens (no EOS: every row decodes every step on both sides); tokens/s =
    batch × targets. The share of generated tokens that agree is printed.

Times: the median of `--repeats` calls after a first call (which, for JAX,
compiles; printed separately as 'first call s'). PyTorch uses
`torch.set_num_threads(os.cpu_count())`. Ratio = JAX tokens/s ÷ PyTorch tokens/s.
`--dtype=bfloat16`: JAX computes in bfloat16 with float32 parameters (the
project's mixed precision), PyTorch runs the model cast to bfloat16.

Sizes (`SIZES`): 'tiny' (the qwen3 tiny gin's shapes) and 'qwen3_0_6b_like':
Qwen3-0.6B's layer shapes (hidden 1024, 16 query / 8 key-value heads of 128,
MLP 3072, q/k norms, tied embeddings, rope theta 1e6) with 4 of its 28 layers
and a 32768-token vocabulary instead of 151936 by default, to fit CPU time;
`--layers=28 --vocab=151936` gives the full model.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers

from distill_sbs import models

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_throughput import common_parser  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# name: transformers Qwen3Config fields
SIZES = {
    'tiny': dict(vocab_size=384, hidden_size=64, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, intermediate_size=128,
                 num_hidden_layers=2),
    'qwen3_0_6b_like': dict(vocab_size=32768, hidden_size=1024, num_attention_heads=16,
                            num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                            num_hidden_layers=4),
}
QWEN3_0_6B_LAYERS, QWEN3_0_6B_VOCAB = 28, 151936
NO_EOS = 10 ** 9  # an id no model emits: every row decodes every step


def shapes(size: str, layers: int = 0, vocab: int = 0) -> dict:
  s = dict(SIZES[size])
  if layers:
    s['num_hidden_layers'] = layers
  if vocab:
    s['vocab_size'] = vocab
  return s


def build_torch(shape: dict, seed: int = 0) -> transformers.Qwen3ForCausalLM:
  torch.manual_seed(seed)
  cfg = transformers.Qwen3Config(**shape, tie_word_embeddings=True, rope_theta=1e6,
                                 max_position_embeddings=4096, rms_norm_eps=1e-6,
                                 pad_token_id=0, bos_token_id=None, eos_token_id=1,
                                 attention_dropout=0.0)
  return transformers.Qwen3ForCausalLM(cfg)


def to_jax(model: transformers.Qwen3ForCausalLM, dtype: str):
  """(DecoderOnlyConfig, params) of the same weights, through an HF directory."""
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp, safe_serialization=True)
    config, params = models.load_hf_checkpoint(tmp)
  return config.replace(dtype=dtype), jax.tree.map(jnp.asarray, params)


def timed(fn, repeats: int) -> tuple[float, float]:
  """(first call seconds, incl. compile; median seconds of the next `repeats`)."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def jax_train_step(config, params, seq: np.ndarray, out: dict):
  net = models.DecoderOnlyTransformer(config)
  tx = optax.adam(1e-3)
  state = {'params': params, 'opt': tx.init(params)}
  inputs, targets = jnp.asarray(seq[:, :-1]), jnp.asarray(seq[:, 1:])

  def loss_fn(p):
    logits = net.apply({'params': p}, inputs, enable_dropout=False).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @jax.jit
  def step(p, opt):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, loss

  def run():
    state['params'], state['opt'], loss = step(state['params'], state['opt'])
    out.setdefault('jax_loss', float(jax.block_until_ready(loss)))
    jax.block_until_ready(state['params'])

  return run


def torch_train_step(model, seq: np.ndarray, out: dict):
  model.train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  inputs = torch.tensor(seq[:, :-1], dtype=torch.long)
  targets = torch.tensor(seq[:, 1:], dtype=torch.long)

  def run():
    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=inputs).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1))
    loss.backward()
    opt.step()
    out.setdefault('torch_loss', float(loss.detach()))

  return run


def benchmark(size: str, *, batch_size: int, inputs: int, targets: int, repeats: int,
              dtype: str = 'float32', layers: int = 0, vocab: int = 0,
              attention_kernel: str = 'einsum') -> list[dict]:
  shape = shapes(size, layers, vocab)
  hf = build_torch(shape)
  config, params = to_jax(hf, dtype)
  config = config.replace(attention_kernel=attention_kernel)
  tdtype = torch.bfloat16 if dtype == 'bfloat16' else torch.float32
  rng = np.random.default_rng(0)
  seq = rng.integers(2, shape['vocab_size'], (batch_size, inputs + targets + 1)).astype(np.int32)
  base = {'size': size, 'dtype': dtype, 'batch_size': batch_size, 'inputs': inputs,
          'targets': targets, 'repeats': repeats, **shape,
          'jax_device': jax.devices()[0].device_kind, 'jax': jax.__version__,
          'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
          'cpus': os.cpu_count()}
  rows = []

  # Training step: fwd + bwd + Adam. Fresh copies of the same weights.
  losses = {}
  j_first, j_s = timed(jax_train_step(config, params, seq, losses), repeats)
  t_model = build_torch(shape).to(tdtype)
  t_first, t_s = timed(torch_train_step(t_model, seq, losses), repeats)
  n = batch_size * (inputs + targets)
  rows.append({**base, 'benchmark': 'train_step', 'tokens': n,
               'jax_tokens_per_sec': n / j_s, 'torch_tokens_per_sec': n / t_s,
               'ratio': t_s / j_s, 'jax_first_call_s': j_first, 'torch_first_call_s': t_first,
               'jax_step_s': j_s, 'torch_step_s': t_s, **losses})
  del t_model

  # Greedy decoding with the KV cache, no EOS on either side.
  prompts = seq[:, :inputs]
  dec_cfg = config.replace(eos_ids=(NO_EOS,))
  hf = hf.to(tdtype).eval()
  hf.generation_config.eos_token_id = None
  hf.generation_config.pad_token_id = 0
  gen = {}

  def jax_gen():
    gen['jax'] = np.asarray(jax.block_until_ready(
        models.generate(dec_cfg, params, prompts, max_decode_length=targets)[0]))

  def torch_gen():
    with torch.inference_mode():
      x = torch.tensor(prompts, dtype=torch.long)
      ids = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                        num_beams=1, max_new_tokens=targets, min_new_tokens=targets,
                        use_cache=True)
    gen['torch'] = ids[:, inputs:].numpy()

  j_first, j_s = timed(jax_gen, repeats)
  t_first, t_s = timed(torch_gen, repeats)
  n = batch_size * targets
  agree = float(np.mean(gen['jax'] == gen['torch'])) if (
      gen['jax'].shape == gen['torch'].shape) else 0.0
  rows.append({**base, 'benchmark': 'greedy_decode', 'tokens': n,
               'jax_tokens_per_sec': n / j_s, 'torch_tokens_per_sec': n / t_s,
               'ratio': t_s / j_s, 'jax_first_call_s': j_first, 'torch_first_call_s': t_first,
               'jax_decode_s': j_s, 'torch_decode_s': t_s, 'tokens_agree': agree})
  return rows


def main(argv=None) -> int:
  p = common_parser(__doc__, sizes='tiny,qwen3_0_6b_like', batch_size=4, targets=32)
  p.set_defaults(inputs=128)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--layers', type=int, default=0,
                 help=f'override the layer count (Qwen3-0.6B: {QWEN3_0_6B_LAYERS})')
  p.add_argument('--vocab', type=int, default=0,
                 help=f'override the vocabulary size (Qwen3-0.6B: {QWEN3_0_6B_VOCAB})')
  args = p.parse_args(argv)
  torch.set_num_threads(os.cpu_count() or 1)
  transformers.utils.logging.disable_progress_bar()
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} '
        f'with {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; '
        f'batch {args.batch_size}, {args.inputs} + {args.targets} tokens, '
        f'median of {args.repeats}', flush=True)
  print(f'{"size":>16} {"benchmark":>14} {"jax tok/s":>11} {"torch tok/s":>12} '
        f'{"jax/torch":>9} {"jax 1st s":>10} {"torch 1st s":>11}')
  for size in args.sizes.split(','):
    rows = benchmark(size, batch_size=args.batch_size, inputs=args.inputs,
                     targets=args.targets, repeats=args.repeats, dtype=args.dtype,
                     layers=args.layers, vocab=args.vocab,
                     attention_kernel=args.attention_kernel)
    for r in rows:
      print(f"{size:>16} {r['benchmark']:>14} {r['jax_tokens_per_sec']:11.1f} "
            f"{r['torch_tokens_per_sec']:12.1f} {r['ratio']:9.2f} "
            f"{r['jax_first_call_s']:10.2f} {r['torch_first_call_s']:11.2f}", flush=True)
    train, decode = rows
    print(f"{'':>16} layers {train['num_hidden_layers']}, vocab {train['vocab_size']}; "
          f"first-step loss jax {train['jax_loss']:.5f} torch {train['torch_loss']:.5f}; "
          f"greedy tokens agree {100 * decode['tokens_agree']:.1f}%", flush=True)
    if args.json:
      with open(args.json, 'a', encoding='utf-8') as f:
        for r in rows:
          f.write(json.dumps(r) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
