"""Packing: slot efficiency and real-target-tokens/s of step-by-step training.

  python benchmarks/packing.py [--datasets=cqa,svamp,esnli,anli1] [--rows=2000]
      [--steps=12] [--throughput=cqa,esnli] [--packed_lengths=512,192] [--demo]
      [--demo_packed_lengths='72,40;160,40'] [--json=out.json]

Prepares the first `--rows` rows of each dataset from ../shared/data/sbs (the
paper's data) into a temporary directory, then, on the paired step-by-step
task `sbs_{ds}_paired_llm`:

1. slot efficiency (fraction of encoder / decoder slots holding real tokens)
   over the first `--packed_rows` rows of the training stream as the trainer
   reads it (shuffled, repeated), for the layout before packing (each row padded,
   the old lengths 320/256, CQA's `gin/sbs/cqa_tiny.gin` until this change)
   and for the packed rows at the dataset part's lengths (gin/datasets/*.gin);
2. training throughput of a T5 v1.1 tiny student at equal batch rows (16):
   real target tokens per second of the project's Trainer step on real
   batches of both layouts, measured in the same process, the two layouts'
   steps alternating (`--steps` of each; median step time, mean real tokens).
3. with `--demo`, the same for the demo's e-SNLI setting (its SentencePiece
   vocabulary, model, 72/40 lengths and 64-row batches), padded vs packed.
The ratios of (2) and (3) are what the issue asks to be ≥ 1.8×.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
OLD_LENGTHS = {'cqa': (320, 256), 'svamp': (384, 256), 'esnli': (320, 256),
               'anli1': (768, 256)}


def _prepare(datasets, rows: int) -> str:
  from distill_sbs.data import prepare  # pylint: disable=g-import-not-at-top
  out = os.path.join(tempfile.gettempdir(), f'distill_sbs_packing_bench_{rows}')
  raw = os.environ.get('DISTILL_SBS_RAW_DIR', str(REPO.parent / 'shared' / 'data' / 'sbs'))
  for ds in datasets:
    if not os.path.exists(os.path.join(out, ds, 'manifest.json')):
      prepare.prepare_dataset(raw, ds, out, max_rows=rows)
  return out


PACKED_LENGTHS: dict[str, tuple[int, int]] = {}  # --packed_lengths overrides


def _gin_lengths(ds: str) -> tuple[int, int]:
  if ds in PACKED_LENGTHS:
    return PACKED_LENGTHS[ds]
  from distill_sbs.training import gin_macros  # pylint: disable=g-import-not-at-top
  m = gin_macros.read_macros(['gin/runs/cpu.gin', 'gin/methods/sbs_llm.gin',
                              f'gin/datasets/{ds}.gin'])
  return m['TASK_FEATURE_LENGTHS']['inputs'], m['TASK_FEATURE_LENGTHS']['targets']


BLOCKS: dict[str, int] = {}  # --encoder_block_length overrides


def _gin_block(ds: str) -> int:
  """The dataset part's ENCODER_BLOCK_LENGTH (0 when it sets none)."""
  if ds in BLOCKS:
    return BLOCKS[ds]
  from distill_sbs.training import gin_macros  # pylint: disable=g-import-not-at-top
  m = gin_macros.read_macros(['gin/runs/cpu.gin', 'gin/methods/sbs_llm.gin',
                              f'gin/datasets/{ds}.gin'])
  return int(m.get('ENCODER_BLOCK_LENGTH', 0) or 0)


def _rows(ds: str, lengths, pack: bool, limit: int, block: int = 0):
  """The first `limit` rows of the training stream as the trainer reads it
  (shuffled, repeated: packing in steady state, no end-of-data rows); packed
  inputs in `block`-token blocks when block > 0."""
  import seqio  # pylint: disable=g-import-not-at-top
  from distill_sbs.data import feature_converters  # pylint: disable=g-import-not-at-top
  d = seqio.get_dataset(f'sbs_{ds}_paired_llm',
                        task_feature_lengths={'inputs': lengths[0], 'targets': lengths[1]},
                        dataset_split='train', shuffle=True, seed=0, num_epochs=None,
                        feature_converter=feature_converters.PairedEncDecFeatureConverter(
                            pack=pack, encoder_block_length=block if pack else 0))
  return list(itertools.islice(d.as_numpy_iterator(), limit))


def efficiency(ds: str, num_rows: int = 1500) -> dict:
  out = {'dataset': ds}
  for name, lengths, pack, block in (('padded', OLD_LENGTHS[ds], False, 0),
                                     ('packed', _gin_lengths(ds), True, _gin_block(ds))):
    rows = _rows(ds, lengths, pack, num_rows, block)
    enc = np.stack([r['encoder_input_tokens'] for r in rows])
    dec = np.stack([r['decoder_target_tokens'] for r in rows])
    out[name] = {'lengths': list(lengths), 'rows': len(rows), 'encoder_block_length': block,
                 'encoder_slot_efficiency': float((enc > 0).mean()),
                 'decoder_slot_efficiency': float((dec > 0).mean()),
                 'target_tokens': int((dec > 0).sum())}
  return out


def throughput(ds: str, *, batch_rows: int = 16, steps: int = 12, t5=None,
               layouts=None) -> dict:
  """Real target tokens/s of the Trainer step on real batches of each layout
  ((name, (inputs, targets) lengths, pack, encoder block length); default:
  the old padded rows against the dataset part's packed rows), same model
  (but for its `encoder_block_length`, not a parameter) and batch rows."""
  import jax  # pylint: disable=g-import-not-at-top
  from distill_sbs import models  # pylint: disable=g-import-not-at-top
  from distill_sbs.distill import losses  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import model as model_lib  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import optimizers  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import partitioning  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  t5 = t5 or models.T5Config(vocab_size=384, emb_dim=64, num_heads=4, head_dim=16,
                             num_encoder_layers=2, num_decoder_layers=2, mlp_dim=128,
                             dtype='float32')
  mesh_cfg = partitioning.MeshConfig(num_partitions=1)
  mesh = partitioning.create_mesh(mesh_cfg)
  out = {'dataset': ds, 'batch_rows': batch_rows, 'steps': steps}
  layouts = layouts or (('padded', OLD_LENGTHS[ds], False, 0),
                        ('packed', _gin_lengths(ds), True, _gin_block(ds)))
  runs = {}
  for name, lengths, pack, block in layouts:
    model = model_lib.EncoderDecoderModel(
        module=models.Transformer(t5.replace(encoder_block_length=block)),
        input_vocabulary=None, output_vocabulary=None,
        optimizer_def=optimizers.adafactor(optimizers.constant(1e-3)),
        loss_fn=losses.StepByStepLoss())
    rows = _rows(ds, lengths, pack, limit=batch_rows * (steps + 1), block=block)
    batches = [{k: np.stack([r[k] for r in rows[i:i + batch_rows]]) for k in rows[0]}
               for i in range(0, batch_rows * (steps + 1), batch_rows)]
    tr = trainer_lib.Trainer(model, mesh, mesh_cfg.logical_axis_rules(),
                             {k: v.shape for k, v in batches[0].items()})
    state = tr.init_state()
    t0 = time.perf_counter()
    state, m = tr.train_step(state, tr.shard_batch(batches[0]))
    jax.block_until_ready(m)
    runs[name] = {'trainer': tr, 'state': state, 'batches': batches[1:],
                  'sharded': [tr.shard_batch(b) for b in batches[1:]],
                  'compile_s': time.perf_counter() - t0, 'times': [], 'lengths': lengths,
                  'block': block}
  # The layouts' steps alternate, so a slow spell of the machine hits both.
  for i in range(steps):
    for r in runs.values():
      t0 = time.perf_counter()
      r['state'], m = r['trainer'].train_step(r['state'], r['sharded'][i])
      jax.block_until_ready(m)
      r['times'].append(time.perf_counter() - t0)
  for name, r in runs.items():
    step_s = float(np.median(r['times']))
    real = np.mean([int((b['decoder_target_tokens'] > 0).sum()) for b in r['batches']])
    out[name] = {'lengths': list(r['lengths']), 'encoder_block_length': r['block'],
                 'step_s': step_s, 'compile_s': r['compile_s'],
                 'real_target_tokens_per_s': float(real / step_s),
                 'decoder_slot_efficiency': float(np.mean(
                     [(b['decoder_target_tokens'] > 0).mean() for b in r['batches']]))}
  out['ratio'] = out['packed']['real_target_tokens_per_s'] / out['padded']['real_target_tokens_per_s']
  return out


def demo_throughput(data_dir: str, *, steps: int = 12,
                    packed_lengths: tuple[int, int] | None = None) -> dict:
  """The demo's e-SNLI setting (`make demo`): its 2,000-piece SentencePiece
  vocabulary trained on the training text, its tiny T5 (d_model 128, 2+2
  layers), its lengths 72 / 40 and its step-by-step batch of 64 rows, padded
  (the demo's PACK=False) against packed rows, at the same lengths or at
  `packed_lengths` (rows sized to the data: 72 / 40 rows hold 1-2 pieces and
  leave two thirds of the target slots empty), same rows."""
  import pathlib as _pathlib  # pylint: disable=g-import-not-at-top
  from distill_sbs import models  # pylint: disable=g-import-not-at-top
  from distill_sbs.data import vocab  # pylint: disable=g-import-not-at-top
  from distill_sbs.experiments import demo  # pylint: disable=g-import-not-at-top
  from distill_sbs.experiments import spm  # pylint: disable=g-import-not-at-top
  cfg = demo.DemoConfig()
  prefix = os.path.join(data_dir, f'spm_esnli_{cfg.vocab_size}')
  if not os.path.exists(prefix + '.model'):
    records = demo.read_records(_pathlib.Path(data_dir) / 'esnli', 'train')
    spm.train_spm(spm.record_texts(records), prefix, cfg.vocab_size)
  os.environ[vocab.SPM_PATH_ENV] = prefix + '.model'
  vocab.reset_default_vocabulary()
  t5 = models.T5Config(vocab_size=demo.vocab_total_size(_pathlib.Path(prefix + '.model')),
                       emb_dim=128, num_heads=4, head_dim=32, num_encoder_layers=2,
                       num_decoder_layers=2, mlp_dim=256, dtype='float32')
  lengths = (cfg.input_length, cfg.target_length)
  try:
    out = throughput('esnli', batch_rows=2 * cfg.batch_size, steps=steps, t5=t5,
                     layouts=(('padded', lengths, False, 0),
                              ('packed', tuple(packed_lengths or lengths), True, 0)))
  finally:
    del os.environ[vocab.SPM_PATH_ENV]
    vocab.reset_default_vocabulary()
  out['dataset'] = 'esnli (demo setting)'
  return out


def _blocks(r: dict) -> str:
  n = r.get('encoder_block_length')
  return f', encoder blocks of {n}' if n else ''


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--datasets', default='cqa,svamp,esnli,anli1')
  p.add_argument('--rows', type=int, default=2000)
  p.add_argument('--steps', type=int, default=12)
  p.add_argument('--packed_rows', type=int, default=1500,
                 help='rows of the training stream whose slots are counted')
  p.add_argument('--throughput', default='cqa,esnli', help='datasets to time ("" none)')
  p.add_argument('--packed_lengths', default='',
                 help='inputs,targets of the packed rows instead of the gin files\'')
  p.add_argument('--encoder_block_length', type=int, default=None,
                 help="packed inputs' block length instead of the gin files' "
                      'ENCODER_BLOCK_LENGTH (0: whole rows)')
  p.add_argument('--demo', action='store_true',
                 help="also time the demo's e-SNLI setting (SentencePiece, 72/40, 64 rows)")
  p.add_argument('--demo_packed_lengths', default='72,40',
                 help='inputs,targets of the packed demo rows; several as 72,40;160,40')
  p.add_argument('--json', default=None)
  args = p.parse_args(argv)
  os.chdir(REPO)
  datasets = args.datasets.split(',')
  if args.packed_lengths:
    lengths = tuple(int(x) for x in args.packed_lengths.split(','))
    PACKED_LENGTHS.update({ds: lengths for ds in datasets})
  if args.encoder_block_length is not None:
    BLOCKS.update({ds: args.encoder_block_length for ds in datasets})
  os.environ['DISTILL_SBS_DATA_DIR'] = _prepare(datasets, args.rows)
  import distill_sbs.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  results = []
  for ds in datasets:
    e = efficiency(ds, args.packed_rows)
    results.append(e)
    print(f"{ds:6s} slots enc/dec: padded {e['padded']['encoder_slot_efficiency']:.3f}/"
          f"{e['padded']['decoder_slot_efficiency']:.3f} at {e['padded']['lengths']}, "
          f"packed {e['packed']['encoder_slot_efficiency']:.3f}/"
          f"{e['packed']['decoder_slot_efficiency']:.3f} at {e['packed']['lengths']}"
          f"{_blocks(e['packed'])}", flush=True)
  for ds in filter(None, args.throughput.split(',')):
    t = throughput(ds, steps=args.steps)
    results.append(t)
    print(f"{ds:6s} real target tokens/s at 16 rows: padded "
          f"{t['padded']['real_target_tokens_per_s']:.0f} ({t['padded']['step_s'] * 1e3:.0f} ms/step)"
          f", packed {t['packed']['real_target_tokens_per_s']:.0f} "
          f"({t['packed']['step_s'] * 1e3:.0f} ms/step{_blocks(t['packed'])}): "
          f"{t['ratio']:.2f}x", flush=True)
  for packed in (args.demo_packed_lengths.split(';') if args.demo else ()):
    lengths = tuple(int(x) for x in packed.split(','))
    t = demo_throughput(os.environ['DISTILL_SBS_DATA_DIR'], steps=args.steps,
                        packed_lengths=lengths)
    results.append(t)
    print(f"demo e-SNLI real target tokens/s at {t['batch_rows']} rows: padded 72/40 "
          f"{t['padded']['real_target_tokens_per_s']:.0f}, packed {lengths[0]}/{lengths[1]} "
          f"{t['packed']['real_target_tokens_per_s']:.0f}: {t['ratio']:.2f}x", flush=True)
  if args.json:
    with open(args.json, 'a', encoding='utf-8') as f:
      for r in results:
        f.write(json.dumps(r) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
