r"""Teacher throughput.

(a) HTTP: requests/s of `OpenAIBackend` against the loopback server with a fixed
    latency (default 50 ms) per request, versus the ideal concurrency / latency.
(b) Local T5: generation tokens/s of `distill_sbs.models.generate` (jit, greedy,
    batch sharded over all devices) versus `transformers`' PyTorch `generate`
    on the same config, weights and batch, in the same run; printed as a ratio.
    Also the full `LocalT5Backend` path (generation + top-k scoring).

  python benchmarks/teacher_throughput.py [--requests=400] [--concurrency=1,8,32,64]
      [--size=small|tiny] [--batch=16] [--decode=64] [--json=out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

SIZES = {  # T5Config kwargs
    'tiny': dict(vocab_size=512, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                 num_encoder_layers=2, num_decoder_layers=2),
    'small': dict(vocab_size=32128, emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024,
                  num_encoder_layers=8, num_decoder_layers=8),  # t5-v1_1-small shapes
}


def bench_http(requests: int, concurrencies, latency_s: float) -> list[dict]:
  from distill_sbs.teacher import base
  from distill_sbs.teacher.loopback import LoopbackServer
  from distill_sbs.teacher.openai_backend import OpenAIBackend
  from distill_sbs.teacher.prompts import Prompt
  rows = []
  with LoopbackServer(lambda p, b: 'Because. So the answer is (a) x.',
                      latency_s=latency_s) as server:
    for c in concurrencies:
      backend = OpenAIBackend(server.base_url, 'bench', concurrency=c, timeout=30)
      n = max(requests, 4 * c)
      prompts = [Prompt(id=str(i), text=f'Q: {i}\nA:') for i in range(n)]
      list(backend.generate(prompts[:c], base.SamplingConfig(max_tokens=16)))  # warm up
      t0 = time.perf_counter()
      results = list(backend.generate(prompts, base.SamplingConfig(max_tokens=16)))
      dt = time.perf_counter() - t0
      assert len(results) == n and all(r.ok for r in results)
      ideal = c / latency_s
      rows.append({'concurrency': c, 'requests': n, 'seconds': dt, 'req_per_s': n / dt,
                   'ideal_req_per_s': ideal, 'fraction_of_ideal': n / dt / ideal})
  return rows


def _count_generated(tokens: np.ndarray) -> int:
  """Tokens through the first EOS (or the whole row), per row, summed."""
  total = 0
  for row in tokens:
    eos = np.nonzero(row == 1)[0]
    total += int(eos[0]) + 1 if eos.size else int(np.count_nonzero(row)) or len(row)
  return total


def bench_local(size: str, batch: int, input_len: int, decode: int, repeats: int,
                torch_threads: int = 0) -> dict:
  import jax
  import jax.numpy as jnp
  import torch
  import transformers
  from flax.core import meta
  from distill_sbs import models
  from distill_sbs.teacher import base
  from distill_sbs.teacher.local_t5 import LocalT5Backend
  from distill_sbs.teacher.prompts import Prompt

  config = models.T5Config(**SIZES[size])
  x = jnp.ones((2, 8), jnp.int32)
  params = meta.unbox(models.Transformer(config).init(
      jax.random.PRNGKey(0), x, x, x, enable_dropout=False)['params'])
  params = jax.tree.map(lambda p: p * 2.0, params)
  path = tempfile.mkdtemp(prefix='teacher_bench_')
  models.save_hf_checkpoint(path, config, params)
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, min(config.vocab_size, 250), size=(batch, input_len)).astype(np.int32)
  inputs[:, -1] = 1

  # Ours: jit generate, batch sharded over a 1-D data mesh of all devices.
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  ndev = len(jax.devices())
  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  dev_params = jax.device_put(params, NamedSharding(mesh, P()))
  rows = -(-batch // ndev) * ndev
  padded = np.zeros((rows, input_len), np.int32)
  padded[:batch] = inputs
  enc = jax.device_put(padded, NamedSharding(mesh, P('data')))

  def ours():
    toks, _ = models.generate(config, dev_params, enc, max_decode_length=decode)
    return np.asarray(jax.block_until_ready(toks))[:batch]
  ours()  # compile
  t0 = time.perf_counter()
  for _ in range(repeats):
    our_tokens = ours()
  our_s = (time.perf_counter() - t0) / repeats

  # transformers PyTorch on the same weights / batch, with as many intra-op
  # threads as JAX has cores (like for like; --torch_threads sets another count).
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  if torch_threads > 0:
    torch.set_num_threads(torch_threads)
  hf = transformers.T5ForConditionalGeneration.from_pretrained(path).eval().to(device)
  ids = torch.tensor(inputs, dtype=torch.long, device=device)
  mask = torch.ones_like(ids)

  def theirs():
    with torch.no_grad():
      out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=decode,
                        do_sample=False, num_beams=1, decoder_start_token_id=0,
                        eos_token_id=1, pad_token_id=0)
    if device == 'cuda':
      torch.cuda.synchronize()
    return out[:, 1:].cpu().numpy()  # drop the start token
  theirs()
  t0 = time.perf_counter()
  for _ in range(repeats):
    hf_tokens = theirs()
  hf_s = (time.perf_counter() - t0) / repeats

  our_n, hf_n = _count_generated(our_tokens), _count_generated(hf_tokens)
  width = min(our_tokens.shape[1], hf_tokens.shape[1])
  same = float(np.mean(np.all(our_tokens[:, :width] == np.pad(
      hf_tokens, ((0, 0), (0, max(0, width - hf_tokens.shape[1]))))[:, :width], axis=1)))

  # The whole local backend path (generation + teacher-forced top-k scoring).
  backend = LocalT5Backend(path, batch_size=batch, k=5, max_input_length=input_len,
                           vocabulary=_IdVocab(config.vocab_size))
  prompts = [Prompt(id=str(i), text=' '.join(map(str, inputs[i, :-1]))) for i in range(batch)]
  sampling = base.SamplingConfig(max_tokens=decode)
  backend.generate_batch(prompts, sampling)
  t0 = time.perf_counter()
  for _ in range(repeats):
    res = backend.generate_batch(prompts, sampling)
  backend_s = (time.perf_counter() - t0) / repeats
  backend_n = sum(c.num_tokens for r in res for c in r.completions)
  return {'size': size, 'batch': batch, 'input_len': input_len, 'max_decode': decode,
          'devices': ndev, 'jax_backend': jax.default_backend(), 'torch_device': device,
          'torch_threads': torch.get_num_threads(),
          'ours_s': our_s, 'ours_tokens': our_n, 'ours_tok_per_s': our_n / our_s,
          'hf_s': hf_s, 'hf_tokens': hf_n, 'hf_tok_per_s': hf_n / hf_s,
          'ratio_ours_over_hf': (our_n / our_s) / (hf_n / hf_s),
          'greedy_rows_identical': same,
          'backend_s': backend_s, 'backend_tok_per_s': backend_n / backend_s}


class _IdVocab:
  """A whitespace-separated-ids 'vocabulary' so prompts map to exact ids."""

  def __init__(self, size):
    self.vocab_size = size
    self.eos_id, self.pad_id, self.unk_id, self.extra_ids = 1, 0, 2, 0

  def encode(self, s):
    return [int(t) for t in s.split()]

  def decode(self, ids):
    return ' '.join(str(int(i)) for i in ids)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--requests', type=int, default=400)
  ap.add_argument('--concurrency', default='1,8,32,64')
  ap.add_argument('--latency', type=float, default=0.05)
  ap.add_argument('--size', default='tiny', choices=sorted(SIZES))
  ap.add_argument('--batch', type=int, default=16)
  ap.add_argument('--input_len', type=int, default=64)
  ap.add_argument('--decode', type=int, default=64)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--torch_threads', type=int,
                  default=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                  else (os.cpu_count() or 1),
                  help='torch intra-op threads for the CPU baseline (default: the cores '
                       'JAX uses; 0 = torch default)')
  ap.add_argument('--skip_http', action='store_true')
  ap.add_argument('--skip_local', action='store_true')
  ap.add_argument('--json', default=None)
  args = ap.parse_args(argv)
  out = {}
  if not args.skip_http:
    out['http'] = bench_http(args.requests, [int(c) for c in args.concurrency.split(',')],
                             args.latency)
    print(f'(a) HTTP, loopback server with {1000 * args.latency:.0f} ms latency')
    print(f'{"concurrency":>11} {"requests":>8} {"req/s":>8} {"ideal":>8} {"of ideal":>8}')
    for r in out['http']:
      print(f'{r["concurrency"]:11d} {r["requests"]:8d} {r["req_per_s"]:8.1f} '
            f'{r["ideal_req_per_s"]:8.1f} {100 * r["fraction_of_ideal"]:7.1f}%')
  if not args.skip_local:
    r = bench_local(args.size, args.batch, args.input_len, args.decode, args.repeats,
                    args.torch_threads)
    out['local'] = r
    print(f'(b) local T5 ({r["size"]}, batch {r["batch"]}, input {r["input_len"]}, '
          f'decode {r["max_decode"]}; jax {r["jax_backend"]} x{r["devices"]}, '
          f'torch {r["torch_device"]} x{r["torch_threads"]} threads)')
    print(f'    ours (jax generate)     {r["ours_tok_per_s"]:10.1f} tokens/s '
          f'({r["ours_tokens"]} tokens, {r["ours_s"]:.3f} s)')
    print(f'    transformers generate   {r["hf_tok_per_s"]:10.1f} tokens/s '
          f'({r["hf_tokens"]} tokens, {r["hf_s"]:.3f} s)')
    print(f'    ratio ours / transformers: {r["ratio_ours_over_hf"]:.2f}x; '
          f'greedy rows identical: {100 * r["greedy_rows_identical"]:.0f}%')
    print(f'    LocalT5Backend (generate + top-5 scoring): '
          f'{r["backend_tok_per_s"]:.1f} tokens/s')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(out, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
