"""`python -m distill_sbs.data.prepare`: raw paper layout -> record shards + manifest.

  python -m distill_sbs.data.prepare --raw_dir ../shared/data/sbs \
      [--data_dir DIR] [--datasets cqa,svamp,esnli,anli1] [--max_rows N] \
      [--num_shards 1] [--seed 0] [--validation_fraction 0.1]

Splits: a gold `train` file is used as is; the validation split is the `valid`
file when a train file exists too, else 10% (seed 0) of the pool, where the pool
is `train` (CQA, SVAMP) or, when no train file is present, `valid` (e-SNLI and
ANLI-R1 here). `test` is the test file. Every raw file of a dataset is read and
checked before anything is written. A dataset's splits and manifest are
replaced together or not at all: everything is written into a staging folder
`{data_dir}/.{ds}.staging-*` and swapped with `{data_dir}/{ds}` at the end (a
run killed or failing before the swap leaves the previous dataset as it was).
The manifest records the split settings and the sha256 of every shard
(`shard_sha256`); the record sources check them when they open a dataset.

Teacher accuracy in the manifest follows the paper's `metrics.py`: exact string
equality of parsed teacher label and gold label (cqa, NLI), and numeric equality
of the evaluated equations for svamp (our parser, not `eval`).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import sys
import time
import uuid
from typing import Any, Optional, Sequence

from distill_sbs.data import formats
from distill_sbs.data import parsers
from distill_sbs.data import paths
from distill_sbs.data import schema
from distill_sbs.data import sources
from distill_sbs.data import splits as splits_lib
from distill_sbs.distill import io_utils
from distill_sbs.metrics import svamp as svamp_metrics

FORMAT_VERSION = 1
SHARD_DIGESTS = paths.SHARD_DIGESTS


def make_record(ds: str, row: dict[str, Any], completion: Optional[str],
                record_id: str) -> dict[str, Any]:
  """One schema record from a gold row and (optional) raw teacher completion."""
  rec = {'id': record_id, 'inputs': formats.format_input(ds, row),
         'label': formats.gold_label(ds, row), 'llm_label': '', 'rationale': '',
         'llm_output': ''}
  if completion is not None:
    parsed = parsers.parse_completion(ds, completion)
    rec.update(llm_label=parsed.label, rationale=parsed.rationale,
               llm_output=completion)
    rec['_parse_ok'] = parsed.ok
  return rec


def teacher_correct(ds: str, gold: str, llm_label: str) -> bool:
  if ds == 'svamp':
    return svamp_metrics.equations_equal(gold, llm_label)
  return gold == llm_label


def _load_source_split(raw_dir: str, ds: str, split: str, max_rows: Optional[int],
                       hashes: dict[str, str]) -> Optional[list[dict[str, Any]]]:
  """Records of one raw split (None when its gold file is absent)."""
  gpath = sources.gold_path(raw_dir, ds, split)
  if not os.path.exists(gpath):
    return None
  rows = sources.read_jsonl(gpath, max_rows)
  hashes[os.path.relpath(gpath, raw_dir)] = sources.sha256_file(gpath)
  files = sources.completion_files(raw_dir, ds, split)
  comps: list[Any] = []
  if files:
    for p in files:
      hashes[os.path.relpath(p, raw_dir)] = sources.sha256_file(p)
    comps = sources.read_completions(files)
    n_gold = len(rows) if max_rows is None else len(sources.read_jsonl(gpath))
    if len(comps) != n_gold:
      raise sources.RawDataError(
          f'{os.path.join(raw_dir, ds, "llm", split + "_CoT_*.json")}: '
          f'{len(comps)} completions in {len(files)} files but {gpath} has '
          f'{n_gold} gold rows (they must align by position)')
  records = []
  for i, row in enumerate(rows):
    try:
      rec = make_record(ds, row, comps[i][0] if comps else None,
                        formats.row_id(ds, row, split, i))
    except formats.RowError as e:
      raise sources.RawDataError(f"{gpath}:{row['__line__']}: {e}") from None
    rec['_source'] = f'{split}:{i}'
    records.append(rec)
  return records


def _split_stats(ds: str, records: list[dict[str, Any]]) -> dict[str, Any]:
  with_teacher = [r for r in records if '_parse_ok' in r]
  stats: dict[str, Any] = {'rows': len(records), 'teacher_rows': len(with_teacher)}
  if with_teacher:
    correct = sum(teacher_correct(ds, r['label'], r['llm_label']) for r in with_teacher)
    failed = [r['id'] for r in with_teacher if not r['_parse_ok']]
    stats.update(teacher_accuracy=100.0 * correct / len(with_teacher),
                 parse_failures=len(failed), parse_failure_ids=failed[:20])
  else:
    stats.update(teacher_accuracy=None, parse_failures=0, parse_failure_ids=[])
  return stats


def build_splits(raw_dir: str, ds: str, *, max_rows: Optional[int] = None,
                 seed: int = 0, validation_fraction: float = 0.1
                 ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
  """Reads and checks every raw file of `ds`; returns ({split: records}, info)."""
  formats.check_dataset(ds)
  hashes: dict[str, str] = {}
  raw = {s: _load_source_split(raw_dir, ds, s, max_rows, hashes)
         for s in ('train', 'valid', 'test')}
  if raw['test'] is None:
    raise sources.RawDataError(f'{sources.gold_path(raw_dir, ds, "test")}: missing')
  if raw['train'] is not None and raw['valid'] is not None:
    out = {'train': raw['train'], 'validation': raw['valid']}
    origin = {'train': 'train', 'validation': 'valid'}
  else:
    pool_name = 'train' if raw['train'] is not None else 'valid'
    pool = raw[pool_name]
    if pool is None:
      raise sources.RawDataError(f'{os.path.join(raw_dir, ds)}: neither '
                                 f'{ds}_train.json nor {ds}_valid.json found')
    keep, held = splits_lib.holdout(len(pool), validation_fraction, seed)
    out = {'train': [pool[i] for i in keep], 'validation': [pool[i] for i in held]}
    origin = {'train': f'{pool_name} minus {validation_fraction:g} holdout (seed {seed})',
              'validation': f'{validation_fraction:g} of {pool_name} (seed {seed})'}
  out['test'] = raw['test']
  origin['test'] = 'test'
  info = {'source_files': dict(sorted(hashes.items())), 'origin': origin}
  return out, info


def _recover(data_dir: str, ds: str) -> None:
  """Finishes or undoes an interrupted swap; removes stale staging folders."""
  final = os.path.join(data_dir, ds)
  olds = sorted(glob.glob(os.path.join(data_dir, f'.{ds}.old-*')))
  if olds and not os.path.isdir(final):
    os.replace(olds.pop(), final)  # killed between the two renames: put it back
  for stale in olds + glob.glob(os.path.join(data_dir, f'.{ds}.staging-*')):
    shutil.rmtree(stale, ignore_errors=True)


def swap_in(staging: str, final: str) -> None:
  """Replaces the folder `final` by `staging` (two renames on one filesystem)."""
  old = None
  if os.path.isdir(final):
    old = os.path.join(os.path.dirname(final),
                       f'.{os.path.basename(final)}.old-{uuid.uuid4().hex[:8]}')
    os.replace(final, old)
  os.replace(staging, final)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def prepare_dataset(raw_dir: str, ds: str, data_dir: str, *,
                    max_rows: Optional[int] = None, num_shards: int = 1, seed: int = 0,
                    validation_fraction: float = 0.1) -> dict[str, Any]:
  """Writes `{data_dir}/{ds}/{split}.tfrecord-*` and `manifest.json` (staged,
  then swapped in as a whole); returns the manifest."""
  splits, info = build_splits(raw_dir, ds, max_rows=max_rows, seed=seed,
                              validation_fraction=validation_fraction)
  os.makedirs(data_dir, exist_ok=True)
  _recover(data_dir, ds)
  staging = os.path.join(data_dir, f'.{ds}.staging-{uuid.uuid4().hex[:8]}')
  os.makedirs(staging)
  manifest: dict[str, Any] = {
      'dataset': ds, 'format_version': FORMAT_VERSION,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
      'raw_dir': os.path.abspath(raw_dir), 'split_seed': seed,
      'validation_fraction': validation_fraction, 'max_rows': max_rows,
      'num_shards': num_shards,
      'source_files': info['source_files'], 'splits': {}, SHARD_DIGESTS: {}}
  try:
    for split, records in splits.items():
      stats = _split_stats(ds, records)
      clean = [{k: v for k, v in r.items() if not k.startswith('_')} for r in records]
      files = schema.write_shards(staging, split, clean, num_shards=num_shards)
      stats.update(origin=info['origin'][split], num_shards=num_shards,
                   files=[os.path.basename(f) for f in files])
      manifest['splits'][split] = stats
      for f in files:
        manifest[SHARD_DIGESTS][os.path.basename(f)] = sources.sha256_file(f)
    io_utils.write_json_atomic(os.path.join(staging, paths.MANIFEST), manifest)
    swap_in(staging, os.path.join(data_dir, ds))
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return manifest


def read_manifest(ds: str, data_dir: Optional[str] = None) -> dict[str, Any]:
  with open(paths.manifest_path(ds, data_dir), encoding='utf-8') as f:
    return json.load(f)


def summary_lines(manifests: Sequence[dict[str, Any]]) -> list[str]:
  lines = [f'{"dataset":8s} {"split":10s} {"rows":>7s} {"teacher acc":>11s} '
           f'{"parse fail":>10s}  origin']
  for m in manifests:
    for split, s in m['splits'].items():
      acc = '-' if s['teacher_accuracy'] is None else f'{s["teacher_accuracy"]:.1f}'
      lines.append(f'{m["dataset"]:8s} {split:10s} {s["rows"]:7d} {acc:>11s} '
                   f'{s["parse_failures"]:10d}  {s["origin"]}')
  return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog='python -m distill_sbs.data.prepare',
                              description=__doc__.split('\n')[0])
  p.add_argument('--raw_dir', default=None,
                 help=f'paper-layout raw data (default ${paths.RAW_DIR_ENV})')
  p.add_argument('--data_dir', default=None,
                 help=f'output root (default ${paths.DATA_DIR_ENV} or '
                 f'{paths.DEFAULT_DATA_DIR})')
  p.add_argument('--datasets', default=','.join(formats.DATASETS))
  p.add_argument('--max_rows', type=int, default=None,
                 help='read only the first N rows of each raw split (tests)')
  p.add_argument('--num_shards', type=int, default=1)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--validation_fraction', type=float, default=0.1)
  args = p.parse_args(argv)
  raw_dir = paths.raw_dir(args.raw_dir)
  if not raw_dir:
    p.error(f'--raw_dir is required (or set ${paths.RAW_DIR_ENV})')
  if args.num_shards < 1:
    p.error(f'--num_shards must be >= 1, got {args.num_shards}')
  data_dir = paths.data_dir(args.data_dir)
  datasets = [d.strip() for d in args.datasets.split(',') if d.strip()]
  for ds in datasets:
    formats.check_dataset(ds)
  manifests = []
  for ds in datasets:
    t0 = time.time()
    try:
      m = prepare_dataset(raw_dir, ds, data_dir, max_rows=args.max_rows,
                          num_shards=args.num_shards, seed=args.seed,
                          validation_fraction=args.validation_fraction)
    except (sources.RawDataError, OSError) as e:
      print(f'error: {ds}: {e}', file=sys.stderr)
      return 1
    manifests.append(m)
    print(f'{ds}: wrote {os.path.join(data_dir, ds)} in {time.time() - t0:.1f}s',
          flush=True)
  print('\n'.join(summary_lines(manifests)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
