r"""Fit the teacher temperature on held-out top-k records and store it.

  python -m distill_sbs.calibrate --records=DIR_OR_PATTERN [--split=validation] \
      [--gold_field=label] [--outside=drop] [--out=report.json] [--plot_dir=DIR]

DIR: a records directory (reads `{split}.tfrecord-*-of-*`, writes DIR/manifest.json);
otherwise a file pattern (the manifest beside the files is updated). The gold
tokens are each record's `teacher_target_ids` when the record's
`teacher_topk_field` is `--gold_field` (the teacher scored the gold target);
`--gold_field=any` takes every record with a top-k; `--gold_field=llm_output`
the teacher's own completions (HTTP teachers; carried top-k of another
tokenizer: rows without a carried distribution, i.e. weight 0 or ULD, are
left out). Prints the teacher's
token-level ECE before and after scaling; the trainer reads T back with
`distill_sbs.distill.temperature.read_teacher_temperature`.

With `--checkpoint=HF_DIR` (a local T5 teacher) the records need no top-k: the
teacher scores each record's gold `label` teacher-forced on
`--input_template` (default '{inputs}') and its top-`--k` at every gold token is
used; `--write_to=DIR` names the FIRST records directory whose manifest gets T
(default: `--records`).

  python -m distill_sbs.calibrate --records=$DATA/cqa --split=validation \
      --checkpoint=/path/teacher_hf --write_to=$DATA/first/cqa
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from distill_sbs.data import schema
from distill_sbs.distill import temperature as temp


def _pattern(records: str, split: str) -> str:
  if os.path.isdir(records):
    return os.path.join(records, schema.shard_pattern(split))
  return records


def load_gold_topk(pattern: str, gold_field: str = 'label'
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
  """Concatenated ([N, k] ids, [N, k] log-probs, [N] gold ids, stats) over records."""
  ids, lps, gold = [], [], []
  stats = {'records': 0, 'used': 0, 'fields_seen': set()}
  for rec in schema.read_records(pattern):
    stats['records'] += 1
    if not rec.get('teacher_topk_k'):
      continue
    field = rec.get('teacher_topk_field', '')
    stats['fields_seen'].add(field)
    if gold_field != 'any' and field != gold_field:
      continue
    i, lp = schema.decode_topk(rec)
    tgt = np.asarray(rec.get('teacher_target_ids', []), np.int64)
    if tgt.shape[0] != i.shape[0]:
      raise ValueError(f"record {rec['id']!r} in {pattern}: {tgt.shape[0]} teacher_target_ids "
                       f'but {i.shape[0]} top-k rows')
    # Cross-tokenizer rows that carry no distribution (all absent, or ULD rows: ids all 0).
    keep = (lp > -1e3).any(1) & (i != 0).any(1)
    stats['rows_without_topk'] = stats.get('rows_without_topk', 0) + int((~keep).sum())
    i, lp, tgt = i[keep], lp[keep], tgt[keep]
    if ids and i.shape[1] != ids[0].shape[1]:
      raise ValueError(f"record {rec['id']!r} in {pattern}: k={i.shape[1]} differs from "
                       f'k={ids[0].shape[1]} of earlier records')
    ids.append(i)
    lps.append(lp)
    gold.append(tgt)
    stats['used'] += 1
  if not ids:
    raise ValueError(f'no record in {pattern} has a teacher top-k aligned to '
                     f'{gold_field!r} (teacher_topk_field values seen: '
                     f"{sorted(stats['fields_seen'])}); pass --gold_field")
  stats['fields_seen'] = sorted(stats['fields_seen'])
  return np.concatenate(ids), np.concatenate(lps), np.concatenate(gold), stats


def score_gold_topk(pattern: str, checkpoint: str, *, k: int = 5,
                    input_template: str = '{inputs}', max_input_length: int = 512,
                    max_target_length: int = 64, batch_size: int = 16
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
  """([N, k] ids, [N, k] log-probs, [N] gold ids, stats) from a local teacher
  scoring the gold labels of the records teacher-forced."""
  from distill_sbs import models  # pylint: disable=g-import-not-at-top
  from distill_sbs.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from distill_sbs.models import decoding  # pylint: disable=g-import-not-at-top
  config, params = models.load_hf_checkpoint(os.path.expanduser(checkpoint))
  vocab = models.load_vocabulary(os.path.expanduser(checkpoint)) or vocab_lib.get_vocabulary()
  recs = [r for r in schema.read_records(pattern) if r.get('label')]
  if not recs:
    raise ValueError(f'no record in {pattern} has a gold label to score')
  ids_all, lps_all, gold_all = [], [], []
  for start in range(0, len(recs), batch_size):
    chunk = recs[start:start + batch_size]
    n = batch_size  # fixed row count: one compilation
    enc = np.zeros((n, max_input_length), np.int32)
    tgt = np.zeros((n, max_target_length), np.int32)
    for i, r in enumerate(chunk):
      a = list(vocab.encode(input_template.format(**r)))[-(max_input_length - 1):] + [vocab.eos_id]
      b = list(vocab.encode(r['label']))[:max_target_length - 1] + [vocab.eos_id]
      enc[i, :len(a)], tgt[i, :len(b)] = a, b
    ids, lps = decoding.topk_scores(config, params, enc, tgt, k)
    ids, lps = np.asarray(ids), np.asarray(lps)
    for i in range(len(chunk)):
      real = tgt[i] > 0
      ids_all.append(ids[i][real])
      lps_all.append(lps[i][real])
      gold_all.append(tgt[i][real])
  stats = {'records': len(recs), 'used': len(recs), 'fields_seen': ['label']}
  return np.concatenate(ids_all), np.concatenate(lps_all), np.concatenate(gold_all), stats


def main(argv: Optional[Sequence[str]] = None) -> dict:
  p = argparse.ArgumentParser(prog='python -m distill_sbs.calibrate', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--records', required=True, help='records directory or file pattern')
  p.add_argument('--split', default='validation')
  p.add_argument('--gold_field', default='label')
  p.add_argument('--outside', default='drop', choices=('drop', 'rest'))
  p.add_argument('--num_bins', type=int, default=10)
  p.add_argument('--min_temperature', type=float, default=0.05)
  p.add_argument('--max_temperature', type=float, default=20.0)
  p.add_argument('--out', default=None, help='optional JSON report path')
  p.add_argument('--plot_dir', default=None, help='optional reliability diagram directory')
  p.add_argument('--no_write_manifest', action='store_true')
  p.add_argument('--checkpoint', default=None, help='local teacher (HF dir) scoring gold labels')
  p.add_argument('--k', type=int, default=5)
  p.add_argument('--input_template', default='{inputs}')
  p.add_argument('--max_input_length', type=int, default=512)
  p.add_argument('--max_target_length', type=int, default=64)
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--write_to', default=None, help='records dir whose manifest gets T')
  args = p.parse_args(argv)

  pattern = _pattern(args.records, args.split)
  if args.checkpoint:
    ids, lps, gold, stats = score_gold_topk(
        pattern, args.checkpoint, k=args.k, input_template=args.input_template,
        max_input_length=args.max_input_length, max_target_length=args.max_target_length,
        batch_size=args.batch_size)
  else:
    ids, lps, gold, stats = load_gold_topk(pattern, args.gold_field)
  fit = temp.fit_temperature(ids, lps, gold, bounds=(args.min_temperature, args.max_temperature),
                             outside=args.outside, num_bins=args.num_bins)
  report = dict(fit.as_dict(), records=pattern, split=args.split, gold_field=args.gold_field,
                num_records=stats['used'], k=int(ids.shape[1]))
  if not args.no_write_manifest:
    report['manifest'] = temp.write_teacher_temperature(
        args.write_to or args.records, fit, split=args.split, gold_field=args.gold_field,
        num_records=stats['used'])
  if args.plot_dir:
    from distill_sbs.metrics import reliability
    pos = temp.gold_positions(ids, gold)
    for name, t in (('before', 1.0), ('after', fit.temperature)):
      logq = temp.tempered_log_probs(lps, t)
      reliability.plot_reliability(
          np.clip(np.exp(logq.max(1)), 0, 1), pos == logq.argmax(1),
          os.path.join(args.plot_dir, f'teacher_reliability_{name}.png'),
          num_bins=args.num_bins, title=f'teacher, T={t:.3g}')
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=2)
  print(f'teacher temperature T = {fit.temperature:.4f} '
        f'({stats["used"]} records, {fit.num_tokens} gold tokens, '
        f'{fit.num_outside} outside the top-{ids.shape[1]}, outside={fit.outside})')
  print(f'NLL  before {fit.nll_before:.4f}  after {fit.nll_after:.4f}')
  print(f'ECE  before {100 * fit.ece_before:.2f}%  after {100 * fit.ece_after:.2f}%')
  if 'manifest' in report:
    print(f"wrote teacher_temperature to {report['manifest']}")
  return report


if __name__ == '__main__':
  main(sys.argv[1:])
