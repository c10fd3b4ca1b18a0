"""Greedy decoding throughput (generated tokens/s) of the project's T5 with its KV cache.

  python benchmarks/decode_throughput.py --sizes=tiny,small [--dtype=bfloat16]
      [--batch_size=32] [--inputs=512] [--targets=114] [--repeats=3] [--json=out.json]

Random parameters and prompts; tokens/s counts batch × the decode steps actually
run (the loop stops early only once every row has emitted EOS), read from the
returned tokens. Imports no TensorFlow or seqio, so it
runs on the accelerator machine's stock image (benchmarks/accelerator.sh).
Compile time is printed separately.
"""
from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_sbs import models

sys.path.insert(0, __file__.rsplit('/', 1)[0])
from train_throughput import SIZES, common_parser  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def benchmark(size: str, *, batch_size: int, inputs: int, targets: int, dtype: str,
              repeats: int, attention_kernel: str = 'einsum', scan_layers: bool = False
              ) -> dict:
  cfg = models.T5Config(**SIZES[size], dtype=dtype, attention_kernel=attention_kernel,
                        scan_layers=scan_layers)
  rng = np.random.default_rng(0)
  enc = jnp.asarray(rng.integers(2, cfg.vocab_size, (batch_size, inputs)), jnp.int32)
  x = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(lambda r: models.Transformer(cfg).init(r, x, x, x, enable_dropout=False)
                   )(jax.random.PRNGKey(0))['params']
  t0 = time.perf_counter()
  tokens, _ = models.generate(cfg, params, enc, max_decode_length=targets)
  jax.block_until_ready(tokens)
  compile_s = time.perf_counter() - t0
  times, generated = [], 0
  for _ in range(repeats):
    t0 = time.perf_counter()
    tokens, _ = models.generate(cfg, params, enc, max_decode_length=targets)
    tokens = np.asarray(jax.block_until_ready(tokens))
    times.append(time.perf_counter() - t0)
    steps = int(np.max(np.nonzero(tokens.any(axis=0))[0], initial=-1)) + 1
    generated = batch_size * max(steps, 1)
  secs = float(np.median(times))
  return {'size': size, 'dtype': dtype, 'batch_size': batch_size, 'inputs': inputs,
          'targets': targets, 'device_kind': jax.devices()[0].device_kind,
          'compile_plus_first_s': compile_s, 'decode_s': secs,
          'tokens_per_sec': generated / secs}


def main(argv=None) -> int:
  p = common_parser(__doc__, sizes='tiny', batch_size=32, targets=114)
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args(argv)
  for size in args.sizes.split(','):
    r = benchmark(size, batch_size=args.batch_size, inputs=args.inputs, targets=args.targets,
                  dtype=args.dtype, repeats=args.repeats,
                  attention_kernel=args.attention_kernel, scan_layers=args.scan_layers)
    print(f"{r['size']:>6} {r['dtype']:>8} greedy decode {r['tokens_per_sec']:10.0f} tokens/s "
          f"({r['decode_s'] * 1e3:.0f} ms for {r['targets']} steps x {r['batch_size']}; "
          f"compile + first {r['compile_plus_first_s']:.1f} s; {r['device_kind']})", flush=True)
    if args.json:
      with open(args.json, 'a', encoding='utf-8') as f:
        f.write(json.dumps(r) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
