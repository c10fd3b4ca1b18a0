"""`python -m distill_sbs.experiments.sweep --gin_file=gin/experiments/X.gin`.

Runs methods × data fractions × seeds (× model sizes), each an ordinary
`distill_sbs.train` subprocess in its own MODEL_DIR
`{output_dir}/runs/{dataset}_{size}/{method}/frac{pct}/seed{seed}`, then writes
the report. Three steps, three modules:
  sweep_plan     the grid; each run composed from model size + run + method +
                 dataset gin parts (`SweepConfig`, `plan`)
  sweep_execute  runs what is not finished yet (resumable: rerun the same
                 command after a crash) (`execute`, `subprocess_runner`)
  sweep_report   results.csv, summary.csv, plots, report.md (`write_outputs`)
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import gin

from distill_sbs.experiments import sweep_execute
from distill_sbs.experiments import sweep_plan
from distill_sbs.experiments import sweep_report

# The sweep's API, from the three modules.
REPO_ROOT = sweep_plan.REPO_ROOT
EVAL_FN = sweep_plan.EVAL_FN
SweepConfig = sweep_plan.SweepConfig
PlannedRun = sweep_plan.PlannedRun
plan = sweep_plan.plan
resolve_gin_file = sweep_plan.resolve_gin_file
Runner = sweep_execute.Runner
subprocess_runner = sweep_execute.subprocess_runner
train_progress = sweep_execute.train_progress
execute = sweep_execute.execute
write_outputs = sweep_report.write_outputs
reliability_panels = sweep_report.reliability_panels
choose_metric = sweep_report.choose_metric


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """`--gin_file` (repeatable), `--gin_bindings`/`--gin.KEY=VALUE`, flags."""
  p = argparse.ArgumentParser(prog='python -m distill_sbs.experiments.sweep',
                              description=__doc__.split('\n')[0])
  p.add_argument('--gin_file', action='append', default=[], required=True)
  p.add_argument('--gin_bindings', action='append', default=[])
  p.add_argument('--dry_run', action='store_true', help='print the commands only')
  p.add_argument('--aggregate_only', action='store_true',
                 help='only rebuild CSVs, plots and report from finished runs')
  args, rest = p.parse_known_args(argv)
  bindings = list(args.gin_bindings)
  for r in rest:
    if r.startswith('--gin.') and '=' in r:
      bindings.append(r[len('--gin.'):])
    else:
      p.error(f'unknown argument {r!r}')
  return args, bindings


def load_config(gin_files: Sequence[str], bindings: Sequence[str]) -> SweepConfig:
  gin.add_config_file_search_path(str(REPO_ROOT))
  gin.parse_config_files_and_bindings([resolve_gin_file(f) for f in gin_files],
                                      bindings, finalize_config=False)
  return SweepConfig()  # pylint: disable=no-value-for-parameter


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
  config = load_config(args.gin_file, bindings)
  if args.dry_run:
    for r in plan(config):
      print(' '.join(r.train_argv))
    return 0
  if not args.aggregate_only:
    status = execute(config)
    print(f'sweep {config.name}: ran {len(status["ran"])}, skipped '
          f'{len(status["skipped"])}, failed {len(status["failed"])}')
  paths = write_outputs(config)
  print(f'report: {paths["report"]}')
  print(paths['report'].read_text())
  return 0


if __name__ == '__main__':
  sys.exit(main())
