"""Training throughput (tokens/s) and model FLOPs utilisation of the trainer.

  python benchmarks/train_throughput.py --sizes=tiny,small [--dtype=bfloat16]
      [--batch_size=8] [--inputs=512] [--targets=128] [--steps=10] [--json=out.json]

Synthetic batches, full sharded train step (Adafactor) on all local devices
(data-parallel mesh). MFU = model FLOPs/s ÷ peak FLOPs/s of the devices, with the
peak from `PEAK_FLOPS` (dense, per device; CPU: cores × clock × FLOPs/cycle).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import jax
import numpy as np

from distill_sbs import models
from distill_sbs.distill import losses
from distill_sbs.training import model as model_lib
from distill_sbs.training import optimizers
from distill_sbs.training import partitioning
from distill_sbs.training import trainer as trainer_lib

# T5 v1.1 sizes (t5x_configs/models/t5_1_1/*.gin).
SIZES = {
    'tiny': dict(vocab_size=384, emb_dim=64, num_heads=4, head_dim=16, num_encoder_layers=2,
                 num_decoder_layers=2, mlp_dim=128),
    'small': dict(vocab_size=32128, emb_dim=512, num_heads=6, head_dim=64,
                  num_encoder_layers=8, num_decoder_layers=8, mlp_dim=1024),
    'base': dict(vocab_size=32128, emb_dim=768, num_heads=12, head_dim=64,
                 num_encoder_layers=12, num_decoder_layers=12, mlp_dim=2048),
    'large': dict(vocab_size=32128, emb_dim=1024, num_heads=16, head_dim=64,
                  num_encoder_layers=24, num_decoder_layers=24, mlp_dim=2816),
}

# Dense peak FLOP/s per device: (bf16, fp32). fp32 on NVIDIA uses TF32 tensor cores.
PEAK_FLOPS = {
    'H200': (989e12, 494e12),
    'H100': (989e12, 494e12),
    'A100': (312e12, 156e12),
    'L4': (121e12, 60e12),
    'V100': (125e12, 15.7e12),
    'TPU v4': (275e12, 275e12),
    'TPU v5 lite': (197e12, 197e12),
    'TPU v5p': (459e12, 459e12),
}
CPU_CLOCK_HZ = 2.5e9
CPU_FLOPS_PER_CYCLE = 32  # fp32, two 256-bit FMA units (AVX2); an estimate


def peak_flops_per_device(device, dtype: str) -> tuple[float, str]:
  kind = getattr(device, 'device_kind', '') or ''
  if device.platform == 'cpu':
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    per = cores * CPU_CLOCK_HZ * CPU_FLOPS_PER_CYCLE / max(jax.local_device_count(), 1)
    return per, f'CPU estimate ({cores} cores × {CPU_CLOCK_HZ / 1e9:.1f} GHz × ' \
                f'{CPU_FLOPS_PER_CYCLE} FLOP/cycle)'
  for name, (bf16, fp32) in PEAK_FLOPS.items():
    if re.search(name, kind, re.IGNORECASE):
      return (bf16 if dtype == 'bfloat16' else fp32), f'{name} table'
  return float('nan'), f'unknown device {kind!r}'


def train_flops_per_example(cfg: dict, inputs: int, targets: int) -> float:
  """6 × (matmul FLOPs per token × tokens) incl. attention scores and logits."""
  d, h, k, f = cfg['emb_dim'], cfg['num_heads'], cfg['head_dim'], cfg['mlp_dim']
  att_proj = 4 * d * h * k                # q, k, v, o
  mlp = 3 * d * f                         # gated GELU: wi_0, wi_1, wo
  enc = cfg['num_encoder_layers'] * (att_proj + mlp)
  dec = cfg['num_decoder_layers'] * (2 * att_proj + mlp)
  logits = d * cfg['vocab_size']
  fwd = 2 * (enc * inputs + (dec + logits) * targets)
  # attention scores and weighted sums (2 matmuls, 2 FLOPs per MAC)
  fwd += 2 * 2 * h * k * (cfg['num_encoder_layers'] * inputs * inputs +
                          cfg['num_decoder_layers'] * (targets * targets + targets * inputs))
  return 3.0 * fwd  # forward + backward (2×)


def synthetic_batch(batch: int, inputs: int, targets: int, vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, size=(batch, inputs)).astype(np.int32)
  tgt = rng.integers(2, vocab, size=(batch, targets)).astype(np.int32)
  return {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
          'decoder_input_tokens': np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
          'decoder_loss_weights': np.ones_like(tgt, np.float32)}


def benchmark(size: str, *, batch_size: int, inputs: int, targets: int, steps: int,
              dtype: str, num_partitions: int = 1, attention_kernel: str = 'einsum',
              scan_layers: bool = False, remat_policy: str = 'none') -> dict:
  cfg = dict(SIZES[size])
  t5 = models.T5Config(**cfg, dtype=dtype, attention_kernel=attention_kernel,
                       scan_layers=scan_layers, remat_policy=remat_policy)
  vocab = None  # vocabularies are not used by the train step
  model = model_lib.EncoderDecoderModel(
      module=models.Transformer(t5), input_vocabulary=vocab, output_vocabulary=vocab,
      optimizer_def=optimizers.adafactor(optimizers.constant(1e-3)),
      loss_fn=losses.CrossEntropyLoss())
  mesh_cfg = partitioning.MeshConfig(num_partitions=num_partitions)
  mesh = partitioning.create_mesh(mesh_cfg)
  batch = synthetic_batch(batch_size, inputs, targets, cfg['vocab_size'])
  tr = trainer_lib.Trainer(model, mesh, mesh_cfg.logical_axis_rules(),
                           {k: v.shape for k, v in batch.items()})
  state = tr.init_state()
  gbatch = tr.shard_batch(batch)
  t0 = time.perf_counter()
  state, metrics = tr.train_step(state, gbatch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = tr.train_step(state, gbatch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t0) / steps
  tokens = batch_size * (inputs + targets)
  flops = train_flops_per_example(cfg, inputs, targets) * batch_size
  peak, source = peak_flops_per_device(jax.devices()[0], dtype)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  return {
      'size': size, 'dtype': dtype, 'params': n_params, 'devices': jax.device_count(),
      'scan_layers': scan_layers, 'remat_policy': remat_policy,
      'device_kind': jax.devices()[0].device_kind, 'batch_size': batch_size,
      'inputs': inputs, 'targets': targets, 'step_s': step_s, 'compile_s': compile_s,
      'tokens_per_sec': tokens / step_s, 'model_tflops_per_sec': flops / step_s / 1e12,
      'mfu': flops / step_s / (peak * jax.device_count()), 'peak_source': source,
      'final_loss': float(metrics['loss']),
  }


def common_parser(doc: str, *, sizes: str, batch_size: int, targets: int
                  ) -> argparse.ArgumentParser:
  """The flags the throughput benchmarks share (model, shapes, output)."""
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument('--sizes', default=sizes)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--batch_size', type=int, default=batch_size)
  p.add_argument('--inputs', type=int, default=512)
  p.add_argument('--targets', type=int, default=targets)
  p.add_argument('--attention_kernel', default='einsum', choices=['einsum', 'jax'])
  p.add_argument('--scan_layers', action='store_true',
                 help="T5X's scan_layers: one nn.scan per stack (compile time)")
  p.add_argument('--remat_policy', default='none', choices=['none', 'full', 'minimal'])
  p.add_argument('--json', default=None, help='append results as JSON lines here')
  return p


def main(argv=None) -> None:
  p = common_parser(__doc__, sizes='tiny,small', batch_size=8, targets=128)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--num_partitions', type=int, default=1)
  args = p.parse_args(argv)
  for size in args.sizes.split(','):
    res = benchmark(size, batch_size=args.batch_size, inputs=args.inputs,
                    targets=args.targets, steps=args.steps, dtype=args.dtype,
                    num_partitions=args.num_partitions,
                    attention_kernel=args.attention_kernel, scan_layers=args.scan_layers,
                    remat_policy=args.remat_policy)
    print(f"compile + first step {res['compile_s']:.1f} s", flush=True)
    print(f"{res['size']:>6} {res['dtype']:>8} {res['params'] / 1e6:8.1f}M params  "
          f"{res['tokens_per_sec']:10.0f} tokens/s  {res['step_s'] * 1e3:8.1f} ms/step  "
          f"MFU {100 * res['mfu']:5.1f}%  ({res['device_kind']}, {res['peak_source']})",
          flush=True)
    if args.json:
      with open(args.json, 'a', encoding='utf-8') as f:
        f.write(json.dumps(res) + '\n')


if __name__ == '__main__':
  sys.exit(main())
