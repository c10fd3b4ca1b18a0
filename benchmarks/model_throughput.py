"""Throughput of our JAX T5 vs transformers' PyTorch T5 on the same machine.

Same config, same random weights (the PyTorch model is saved and loaded with
`load_hf_checkpoint`), same batch and lengths:

  * training step: forward + backward + Adafactor update (optax.adafactor vs
    transformers' Adafactor), target tokens / second;
  * the project's `Trainer.train_step` on the same model and batch (its
    overhead over the bare step is printed: shardings, metrics, loss_fn; the
    medians of `--overhead_rounds` steps of each, timed alternately);
  * greedy generation with a key/value cache: generated tokens / second
    (the two produce the same tokens, which is checked).

Each row also prints our first call (compile + one call) and its compile time
(the first call less one steady call).

    python benchmarks/model_throughput.py                 # 'mini', ~1 min on 2 cores
    python benchmarks/model_throughput.py --size small    # T5 v1.1 Small
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers

from distill_sbs import models

# name: (vocab, d_model, heads, d_kv, layers, d_ff)
SIZES = {
    'tiny': (384, 64, 4, 16, 2, 128),
    'mini': (8192, 256, 4, 64, 4, 768),
    'small': (32128, 512, 6, 64, 8, 1024),
    'base': (32128, 768, 12, 64, 12, 2048),
}


def build_torch(size: str, seed: int = 0) -> transformers.T5ForConditionalGeneration:
  vocab, d, heads, dkv, layers, dff = SIZES[size]
  torch.manual_seed(seed)
  cfg = transformers.T5Config(vocab_size=vocab, d_model=d, num_heads=heads, d_kv=dkv,
                              num_layers=layers, num_decoder_layers=layers, d_ff=dff,
                              feed_forward_proj='gated-gelu', dropout_rate=0.0,
                              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  cfg.tie_word_embeddings = False  # T5 v1.1: untied head (transformers 5.x ties otherwise)
  model = transformers.T5ForConditionalGeneration(cfg)
  model.encoder.embed_tokens.weight = model.shared.weight
  model.decoder.embed_tokens.weight = model.shared.weight
  return model


def make_batch(vocab: int, batch: int, inp_len: int, tgt_len: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, vocab, (batch, inp_len)).astype(np.int32)
  targets = rng.integers(2, vocab, (batch, tgt_len)).astype(np.int32)
  targets[:, -1] = 1
  return inputs, targets


def timed(fn, steps: int) -> tuple[float, float]:
  """(first call seconds incl. compile, mean seconds of the next `steps`)."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    fn()
  return first, (time.perf_counter() - t0) / steps


def interleaved_medians(fns, rounds: int) -> list[float]:
  """Median seconds per call of each (already compiled) fn, calls interleaved
  round by round so that a slow spell of the machine hits all of them."""
  times = [[] for _ in fns]
  for _ in range(rounds):
    for t, fn in zip(times, fns):
      t0 = time.perf_counter()
      fn()
      t.append(time.perf_counter() - t0)
  return [float(np.median(t)) for t in times]


def jax_train_step(config, params, inputs, targets):
  model = models.Transformer(config)
  tx = optax.adafactor(learning_rate=1e-3)
  state = {'params': params, 'opt': tx.init(params)}
  dec_in = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]

  def loss_fn(p):
    logits = model.apply({'params': p}, inputs, dec_in, targets, enable_dropout=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    w = (targets > 0).astype(jnp.float32)
    return jnp.sum(ce * w) / jnp.sum(w)

  @jax.jit
  def step(params, opt):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  def run():
    state['params'], state['opt'], loss = step(state['params'], state['opt'])
    jax.block_until_ready(loss)

  return run


def trainer_step(config, params, inputs, targets):
  """The project's `Trainer` step (shardings, metrics, loss_fn, Adafactor) on the
  same model, weights and batch as `jax_train_step`."""
  from distill_sbs.distill import losses  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import model as model_lib  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import optimizers  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import partitioning  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  model = model_lib.EncoderDecoderModel(
      module=models.Transformer(config), input_vocabulary=None, output_vocabulary=None,
      optimizer_def=optimizers.adafactor(optimizers.constant(1e-3)),
      loss_fn=losses.CrossEntropyLoss())
  mesh_cfg = partitioning.MeshConfig(num_partitions=1)
  mesh = partitioning.create_mesh(mesh_cfg)
  batch = {'encoder_input_tokens': inputs, 'decoder_target_tokens': targets,
           'decoder_input_tokens': np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
           'decoder_loss_weights': (targets > 0).astype(np.float32)}
  tr = trainer_lib.Trainer(model, mesh, mesh_cfg.logical_axis_rules(),
                           {k: v.shape for k, v in batch.items()})
  state = {'state': tr.init_state()}
  gbatch = tr.shard_batch(batch)

  def run():
    state['state'], metrics = tr.train_step(state['state'], gbatch)
    jax.block_until_ready(metrics)

  return run


def torch_train_step(model, inputs, targets):
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
  model.train()
  opt = Adafactor(model.parameters(), lr=1e-3, relative_step=False, scale_parameter=True,
                  warmup_init=False)
  x = torch.tensor(inputs, dtype=torch.long)
  labels = torch.tensor(np.where(targets > 0, targets, -100), dtype=torch.long)

  def run():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=x, attention_mask=(x > 0).long(), labels=labels).loss
    loss.backward()
    opt.step()

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', choices=sorted(SIZES), default='mini')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--input_length', type=int, default=128)
  parser.add_argument('--target_length', type=int, default=32)
  parser.add_argument('--train_steps', type=int, default=3)
  parser.add_argument('--generate_runs', type=int, default=2)
  parser.add_argument('--overhead_rounds', type=int, default=20,
                      help='bare / Trainer steps timed alternately (medians)')
  args = parser.parse_args()

  hf = build_torch(args.size).eval()
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(tmp, safe_serialization=True)
    config, params = models.load_hf_checkpoint(tmp)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  inputs, targets = make_batch(config.vocab_size, args.batch, args.input_length,
                               args.target_length)
  n_target = int((targets > 0).sum())
  print(f'size={args.size} vocab={config.vocab_size} d_model={config.emb_dim} '
        f'layers={config.num_encoder_layers}+{config.num_decoder_layers} '
        f'batch={args.batch} input_length={args.input_length} '
        f'target_length={args.target_length}; jax {jax.__version__} on '
        f'{jax.devices()[0].platform}, torch {torch.__version__} with '
        f'{torch.get_num_threads()} threads, {os.cpu_count()} CPUs')

  rows = []
  bare_fn = jax_train_step(config, params, inputs, targets)
  first, ours = timed(bare_fn, args.train_steps)
  _, theirs = timed(torch_train_step(build_torch(args.size), inputs, targets),
                    args.train_steps)
  rows.append(('train step (fwd+bwd+Adafactor)', n_target / ours, n_target / theirs, first,
               first - ours))
  full_fn = trainer_step(config, params, inputs, targets)
  t0 = time.perf_counter()
  full_fn()
  first = time.perf_counter() - t0
  bare, full = interleaved_medians([bare_fn, full_fn], args.overhead_rounds)
  rows.append(('Trainer.train_step (same model)', n_target / full, n_target / theirs, first,
               first - full))

  length = args.target_length
  out = {}

  def ours_gen():
    out['ours'] = np.asarray(models.generate(config, params, inputs,
                                             max_decode_length=length)[0])

  def torch_gen():
    with torch.no_grad():
      x = torch.tensor(inputs, dtype=torch.long)
      ref = hf.generate(input_ids=x, attention_mask=(x > 0).long(), do_sample=False,
                        num_beams=1, max_new_tokens=length).numpy()[:, 1:]
    out['torch'] = np.pad(ref, ((0, 0), (0, length - ref.shape[1])))

  first, ours = timed(ours_gen, args.generate_runs)
  _, theirs = timed(torch_gen, args.generate_runs)
  same = np.array_equal(out['ours'], out['torch'])
  n_gen = int((out['ours'] > 0).sum())
  rows.append(('greedy generation (KV cache)', n_gen / ours, n_gen / theirs, first,
               first - ours))

  print(f'{"benchmark":34s} {"ours tok/s":>12s} {"torch tok/s":>12s} {"ratio":>7s} '
        f'{"ours 1st call s":>16s} {"compile s":>10s}')
  # compile s: the first call less one steady call (tracing + XLA compilation).
  for name, a, b, first, compile_s in rows:
    print(f'{name:34s} {a:12.1f} {b:12.1f} {a / b:7.2f} {first:16.2f} {compile_s:10.2f}')
  print(f'generated tokens identical: {same} ({n_gen} tokens)')
  print(f'Trainer step overhead over the bare jit step: {full / bare - 1:+.1%} '
        f'(medians of {args.overhead_rounds} alternating steps)')


if __name__ == '__main__':
  main()
