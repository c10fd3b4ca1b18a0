"""`python -m distill_sbs.experiments.sweep --gin_file=gin/experiments/X.gin`.

Runs methods × data fractions × seeds (× model sizes), each an ordinary
`distill_sbs.train` subprocess in its own MODEL_DIR
`{output_dir}/runs/{dataset}_{size}/{method}/frac{pct}/seed{seed}`; skips runs
whose done marker matches (resumable: rerun the same command after a crash);
then aggregates every finished run into `results.csv` (one row per run),
`summary.csv` (mean/std over seeds; the headline accuracy and test ECE side
by side), plots (reliability diagrams of the largest-fraction first-seed run of
each method from its `test_predictions.jsonl`) and `report.md` in `output_dir`.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import gin

from distill_sbs.experiments import aggregate
from distill_sbs.experiments import methods as methods_lib
from distill_sbs.experiments import plots
from distill_sbs.experiments import report
from distill_sbs.experiments import runs as runs_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SIZES_ORDER = ('tiny', 'small', 'base', 'large', 'xl', 'xxl')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """One experiment (see module doc).

  Attributes:
    name: experiment name (report title; default output dir).
    dataset: prepared dataset name (cqa, svamp, esnli, anli1).
    sizes: model sizes; `{size}` in the methods' gin file templates.
    methods: method names (`methods.METHODS`) in plot/table order.
    fractions: fractions of the training data in (0, 1].
    seeds: RANDOM_SEED values; mean/std are taken over them.
    train_steps: TRAIN_STEPS of every run.
    output_dir: where runs and the report go ('' = runs/sweeps/{name}).
    bindings: extra `KEY=VALUE` gin bindings for every run (e.g. BATCH_SIZE=8);
      `{dataset}` and `{size}` in them are filled per run (e.g.
      `INITIAL_CHECKPOINT_PATH='/ckpt/t5-v1_1-{size}'`).
    method_overrides: method name -> {field: value} (see `methods.Method`).
    train_command: argv prefix of the trainer.
    eval_command: argv prefix of the test evaluation after training (empty:
      none); it gets the run's gin files and bindings plus `run_student_eval`
      bindings (eval_task, dataset, model=%MODEL, model_dir=%MODEL_DIR) and
      must write `MODEL_DIR/eval_results.json` (flat JSON of numbers).
    eval_bindings: extra `KEY=VALUE` bindings of the evaluation only (e.g.
      `run_student_eval.num_examples=500`).
    metric: metric to plot and tabulate ('' = test_accuracy, else the first
      eval accuracy found, else training accuracy).
    keep_going: continue with the next run when one fails.
  """
  name: str
  dataset: str
  sizes: Sequence[str] = ('tiny',)
  methods: Sequence[str] = ('standard_finetune', 'sbs_llm')
  fractions: Sequence[float] = (0.125, 0.25, 0.5, 1.0)
  seeds: Sequence[int] = (0,)
  train_steps: int = 1000
  output_dir: str = ''
  bindings: Sequence[str] = ()
  method_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=dict)
  train_command: Sequence[str] = (sys.executable, '-m', 'distill_sbs.train')
  eval_command: Sequence[str] = (sys.executable, '-m', 'distill_sbs.experiments.evaluate')
  eval_bindings: Sequence[str] = ()
  metric: str = ''
  keep_going: bool = False

  def __post_init__(self):
    for f in ('sizes', 'methods', 'fractions', 'seeds', 'bindings',
              'train_command', 'eval_command', 'eval_bindings'):
      object.__setattr__(self, f, tuple(getattr(self, f)))
    object.__setattr__(self, 'fractions', tuple(float(x) for x in self.fractions))
    object.__setattr__(self, 'seeds', tuple(int(x) for x in self.seeds))
    for fr in self.fractions:
      runs_lib.format_fraction(fr)  # validates (0, 1]
    if not self.methods or not self.sizes or not self.seeds or not self.fractions:
      raise ValueError(f'SweepConfig {self.name!r}: methods, sizes, fractions and '
                       'seeds must all be non-empty')
    if self.train_steps <= 0:
      raise ValueError(f'SweepConfig.train_steps must be > 0, got {self.train_steps}')
    for b in (*self.bindings, *self.eval_bindings):
      if '=' not in b:
        raise ValueError(f'SweepConfig.bindings: {b!r} is not KEY=VALUE')
    methods_lib.resolve(self.methods, self.method_overrides)  # validates

  @property
  def out_dir(self) -> pathlib.Path:
    return pathlib.Path(self.output_dir or os.path.join('runs', 'sweeps', self.name))


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  spec: runs_lib.RunSpec
  model_dir: pathlib.Path
  train_argv: tuple[str, ...]
  eval_argv: tuple[str, ...]
  signature: str


def _gin_str(s: str) -> str:
  return json.dumps(str(s))


def run_bindings(method: methods_lib.Method, spec: runs_lib.RunSpec,
                 model_dir: pathlib.Path, train_steps: int,
                 extra: Sequence[str]) -> list[str]:
  """`--gin.KEY=VALUE` flags (T5X style) of one run."""
  task = method.task if spec.fraction >= 1.0 else method.fraction_task
  flags = [f'--gin.MODEL_DIR={_gin_str(str(model_dir))}',
           f'--gin.MIXTURE_OR_TASK_NAME={_gin_str(task)}',
           f'--gin.TRAIN_STEPS={int(train_steps)}',
           f'--gin.RANDOM_SEED={int(spec.seed)}']
  keys = {'dataset': spec.dataset, 'size': spec.size}
  flags += [f'--gin.{methods_lib.fill_template(b, keys)}' for b in (*extra, *method.bindings)]
  return flags


EVAL_FN = 'distill_sbs.experiments.evaluate.run_student_eval'


def eval_flags(method: methods_lib.Method, dataset: str,
               extra: Sequence[str] = ()) -> list[str]:
  """The test evaluation's own bindings (see `evaluate.run_student_eval`)."""
  return [f'--gin.{EVAL_FN}.model=%MODEL', f'--gin.{EVAL_FN}.model_dir=%MODEL_DIR',
          f'--gin.{EVAL_FN}.eval_task={_gin_str(method.eval_task)}',
          f'--gin.{EVAL_FN}.dataset={_gin_str(dataset)}',
          f'--gin.{EVAL_FN}.task_feature_lengths=%TASK_FEATURE_LENGTHS',
          *(f'--gin.{b}' for b in extra)]


def resolve_gin_file(path: str) -> str:
  """`path` as given when it exists (or is absolute), else under the repo root."""
  p = pathlib.Path(path)
  if p.is_absolute() or p.exists() or not (REPO_ROOT / p).exists():
    return str(p)
  return str(REPO_ROOT / p)


def plan(config: SweepConfig) -> list[PlannedRun]:
  """Every grid point in order: size, method, fraction, seed."""
  methods = methods_lib.resolve(config.methods, config.method_overrides)
  out = []
  for size in config.sizes:
    for method in methods:
      for fraction in config.fractions:
        m = method.fill(config.dataset, size, fraction)
        for seed in config.seeds:
          spec = runs_lib.RunSpec(config.dataset, size, m.name, fraction, seed)
          model_dir = (config.out_dir / 'runs' / spec.run_id).resolve()
          args = [f'--gin_file={resolve_gin_file(g)}' for g in m.gin_files]
          args += run_bindings(m, spec, model_dir, config.train_steps, config.bindings)
          train_argv = (*config.train_command, *args)
          eval_argv = ((*config.eval_command, *args,
                        *eval_flags(m, config.dataset, config.eval_bindings))
                       if config.eval_command else ())
          # The signature: what the run computes, not where files live.
          sig_src = json.dumps([list(m.gin_files), m.task, m.fraction_task,
                                list(m.bindings), list(config.bindings),
                                config.train_steps, list(config.eval_command[1:]),
                                m.eval_task, list(config.eval_bindings)])
          signature = hashlib.sha256(sig_src.encode()).hexdigest()[:16]
          out.append(PlannedRun(spec, model_dir, train_argv, eval_argv, signature))
  return out


class Runner(Protocol):
  """Runs one argv with its output logged to `log_path`; raises on failure.

  `progress()` (optional) returns a one-line status to show now and then.
  """

  def __call__(self, argv: Sequence[str], log_path: pathlib.Path,
               progress: Optional[Callable[[], Optional[str]]] = None) -> None:
    ...


_NOISE = re.compile(r'^([IWEF]\d{4} |WARNING: All log messages|\$ )')


def _last_line(path: pathlib.Path) -> Optional[str]:
  """The log's last line that is not absl/TF logging noise."""
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
      lines = [l for l in f.read().decode('utf-8', 'replace').splitlines()
               if l.strip() and not _NOISE.match(l)]
    return lines[-1] if lines else None
  except OSError:
    return None


def subprocess_runner(argv: Sequence[str], log_path: pathlib.Path,
                      progress: Optional[Callable[[], Optional[str]]] = None,
                      echo: Callable[[str], None] = lambda s: print(s, flush=True),
                      echo_every: float = 15.0) -> None:
  """Runs argv with output to `log_path`; every `echo_every` s echoes
  `progress()` (default: the log's last line) with the elapsed time."""
  log_path.parent.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  t0 = time.monotonic()
  with open(log_path, 'a') as log:
    log.write('$ ' + ' '.join(argv) + '\n')
    log.flush()
    proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=str(REPO_ROOT))
    try:
      while True:
        try:
          rc = proc.wait(timeout=echo_every)
          break
        except subprocess.TimeoutExpired:
          msg = progress() if progress else _last_line(log_path)
          if msg:
            echo(f'    {msg[:160]} [{time.monotonic() - t0:.0f}s]')
    except BaseException:
      proc.kill()
      proc.wait()
      raise
  if rc != 0:
    tail = ''.join(log_path.read_text().splitlines(keepends=True)[-20:])
    raise RuntimeError(f'command failed (exit {rc}), log {log_path}:\n{tail}')


def train_progress(model_dir: pathlib.Path, total_steps: int
                   ) -> Callable[[], Optional[str]]:
  """'step 300/1500 (20%) loss 2.31, ETA 4m10s' from the run's metrics.jsonl."""
  path = pathlib.Path(model_dir) / runs_lib.METRICS_FILE
  first: dict[str, float] = {}

  def status() -> Optional[str]:
    line = _last_line(path)
    if not line:
      return 'starting (imports, input pipeline, compilation)'
    try:
      rec = json.loads(line)
      step = int(rec['step'])
    except (ValueError, KeyError, TypeError):
      return None
    now = time.monotonic()
    first.setdefault('step', step)
    first.setdefault('time', now)
    msg = f'step {step}/{total_steps} ({100 * step // max(total_steps, 1)}%)'
    if runs_lib.is_number(rec.get('loss')):
      msg += f' loss {rec["loss"]:.3f}'
    done, spent = step - first['step'], now - first['time']
    if done > 0 and spent > 0:
      eta = (total_steps - step) * spent / done
      msg += f', ETA {int(eta // 60)}m{int(eta % 60):02d}s'
    return msg
  return status


def execute(config: SweepConfig, runner: Runner = subprocess_runner,
            log: Callable[[str], None] = lambda s: print(s, flush=True)
            ) -> dict[str, list[runs_lib.RunSpec]]:
  """Runs every unfinished run; returns {'ran': [...], 'skipped': [...], 'failed': [...]}."""
  planned = plan(config)
  status: dict[str, list[runs_lib.RunSpec]] = {'ran': [], 'skipped': [], 'failed': []}
  t0 = time.monotonic()
  for i, run in enumerate(planned, 1):
    head = f'[{i}/{len(planned)}] {run.spec.run_id}'
    if runs_lib.is_done(run.model_dir, run.spec, run.signature):
      log(f'{head}: finished earlier, skipped')
      status['skipped'].append(run.spec)
      continue
    log(f'{head}: training ({time.monotonic() - t0:.0f}s elapsed)')
    seconds = {}
    try:
      t = time.monotonic()
      runner(run.train_argv, run.model_dir / 'train.log',
             progress=train_progress(run.model_dir, config.train_steps))
      seconds['train_seconds'] = round(time.monotonic() - t, 1)
      if run.eval_argv:
        log(f'{head}: evaluating on the test split')
        t = time.monotonic()
        runner(run.eval_argv, run.model_dir / 'eval.log')
        seconds['eval_seconds'] = round(time.monotonic() - t, 1)
    except Exception as e:  # pylint: disable=broad-except
      status['failed'].append(run.spec)
      if not config.keep_going:
        raise
      log(f'{head}: FAILED ({e}); continuing (keep_going)')
      continue
    runs_lib.mark_done(run.model_dir, run.spec,
                       {'signature': run.signature, 'argv': list(run.train_argv[1:]),
                        'wall': seconds})
    status['ran'].append(run.spec)
  return status


def choose_metric(rows: Sequence[Mapping[str, Any]], preferred: str = '') -> str:
  """The headline metric column (see `SweepConfig.metric`)."""
  cols = aggregate.metric_columns(rows)
  if preferred:
    if preferred not in cols:
      raise ValueError(f'metric {preferred!r} is in no run (have {cols})')
    return preferred
  for c in ('test_accuracy',):
    if c in cols:
      return c
  evals = [c for c in cols if 'eval' in c and c.endswith('accuracy')]
  if evals:
    return evals[0]
  if 'accuracy' in cols:
    return 'accuracy'
  raise ValueError(f'no accuracy metric in the runs (columns: {cols})')


def write_outputs(config: SweepConfig) -> dict[str, pathlib.Path]:
  """Aggregates finished runs into CSVs, plots and report.md; returns the paths."""
  done = [(r.spec, r.model_dir) for r in plan(config)
          if runs_lib.read_done(r.model_dir) is not None]
  if not done:
    raise ValueError(f'no finished runs under {config.out_dir}')
  rows = aggregate.collect(done)
  summary = aggregate.summarize(rows)
  out = config.out_dir
  metric = choose_metric(rows, config.metric)
  headline = [metric, *(m for m in TABLE_EXTRA if m != metric)]
  paths = {'results': aggregate.write_csv(rows, out / 'results.csv', front=headline),
           'summary': aggregate.write_csv(
               summary, out / 'summary.csv',
               front=[f'{m}_{s}' for m in headline for s in ('mean', 'std')])}
  paths['vs_fraction'] = plots.plot_metric_vs_fraction(
      summary, out / 'accuracy_vs_fraction.png', metric)
  sizes = [s for s in SIZES_ORDER if s in config.sizes] + \
      [s for s in config.sizes if s not in SIZES_ORDER]
  if len(sizes) > 1:
    paths['vs_size'] = plots.plot_metric_vs_size(
        summary, out / 'accuracy_vs_size.png', sizes, metric, max(config.fractions))
  curves = {}
  for spec, model_dir in done:
    if spec.seed == config.seeds[0] and spec.fraction == max(config.fractions):
      mp = pathlib.Path(model_dir) / runs_lib.METRICS_FILE
      if mp.exists():
        curves[f'{spec.size}/{spec.method}'] = runs_lib.read_metrics(mp)
  if curves:
    paths['curves'] = plots.plot_training_curves(curves, out / 'training_curves.png')
  panels, ece, missing = reliability_panels(config, done, rows)
  if panels:
    paths['reliability'] = plots.plot_reliability(panels, out / 'reliability.png', ece=ece)
  paths['report'] = _write_report(config, summary, metric, paths, len(done), missing)
  return paths


TABLE_EXTRA = ('test_ece',)  # tabulated next to the headline metric


def reliability_panels(config: SweepConfig,
                       done: Sequence[tuple[runs_lib.RunSpec, pathlib.Path]],
                       rows: Sequence[Mapping[str, Any]]):
  """Reliability diagram inputs of the first-size, largest-fraction, first-seed
  run of each method, in method order.

  Returns ({method: (confidences [n], correct [n])}, {method: test ECE},
  [run ids without `test_predictions.jsonl`]).
  """
  from distill_sbs.experiments import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  size, fraction, seed = config.sizes[0], max(config.fractions), config.seeds[0]
  picked = {spec.method: (spec, pathlib.Path(d)) for spec, d in done
            if (spec.size, spec.fraction, spec.seed) == (size, fraction, seed)}
  order = [m.fill(config.dataset, size, fraction).name
           for m in methods_lib.resolve(config.methods, config.method_overrides)]
  panels, ece, missing = {}, {}, []
  for name in order:
    if name not in picked:
      continue
    spec, model_dir = picked[name]
    if not (model_dir / evaluate_lib.PREDICTIONS_FILE).exists():
      missing.append(spec.run_id)
      continue
    conf, correct = evaluate_lib.read_predictions(str(model_dir))
    if not len(conf):
      missing.append(spec.run_id)
      continue
    panels[name] = (conf, correct)
    row = next((r for r in rows if all(r.get(k) == v for k, v in spec.to_json().items())), {})
    if runs_lib.is_number(row.get('test_ece')):
      ece[name] = float(row['test_ece'])
  return panels, ece, missing


def _write_report(config: SweepConfig, summary, metric: str,
                  paths: Mapping[str, pathlib.Path], n_done: int,
                  no_predictions: Sequence[str] = ()) -> pathlib.Path:
  methods = [m.fill(config.dataset, '{size}', max(config.fractions))
             for m in methods_lib.resolve(config.methods, config.method_overrides)]
  order = {m.name: i for i, m in enumerate(methods)}
  rows = sorted(summary, key=lambda r: (SIZES_ORDER.index(r['size'])
                                        if r['size'] in SIZES_ORDER else 99,
                                        order.get(r['method'], 99), r['fraction']))
  cols = ['size', 'method', 'fraction', 'n_seeds', metric]
  extra = [m for m in TABLE_EXTRA
           if m != metric and any(f'{m}_mean' in r for r in summary)]
  cell = lambda r, c: (report.mean_std_cell(r, c) if c in (metric, *extra)
                       else plots.format_pct(r[c]) + '%' if c == 'fraction'
                       else report.fmt_cell(r.get(c)))
  table = report.markdown_table(rows, cols + extra, cell=cell)
  n_planned = len(config.sizes) * len(config.methods) * len(config.fractions) * len(config.seeds)
  sections = [
      ('Setup', '\n'.join([
          f'- dataset: `{config.dataset}`; sizes: {", ".join(config.sizes)}',
          f'- data fractions: {", ".join(plots.format_pct(f) + "%" for f in config.fractions)};'
          f' seeds: {", ".join(map(str, config.seeds))}; train steps: {config.train_steps}',
          f'- runs finished: {n_done} of {n_planned}',
          f'- extra bindings: {", ".join(config.bindings) or "none"}'])),
      ('Methods', '\n'.join(f'- `{m.name}`: {m.description} (task `{m.task}`, tested '
                            f'on `{m.eval_task}`, gin {", ".join(m.gin_files)})'
                            for m in methods)),
      (f'Results ({", ".join([metric, *extra])}, mean ± std over seeds)', table),
      ('Data efficiency', report.image(paths['vs_fraction'].name, 'accuracy vs data')),
  ]
  if 'vs_size' in paths:
    sections.append(('Model size', report.image(paths['vs_size'].name, 'accuracy vs size')))
  if 'curves' in paths:
    sections.append(('Training curves (largest fraction, first seed)',
                     report.image(paths['curves'].name, 'training curves')))
  if 'reliability' in paths or no_predictions:
    body = [report.image(paths['reliability'].name, 'reliability diagrams')
            ] if 'reliability' in paths else ['No run has test predictions.']
    if no_predictions:
      body.append('Skipped (no `test_predictions.jsonl`): ' +
                  ', '.join(f'`{r}`' for r in no_predictions) + '.')
    sections.append((f'Reliability diagrams ({config.sizes[0]}, '
                     f'{plots.format_pct(max(config.fractions))}% data, seed '
                     f'{config.seeds[0]}; test ECE in the titles)', '\n\n'.join(body)))
  sections.append(('Files', '`results.csv`: one row per run (final value of every '
                   'metric in its metrics.jsonl, `test_*` from eval_results.json); '
                   '`summary.csv`: mean and sample std over seeds (headline accuracy '
                   'and test ECE first).'))
  return report.write_report(config.out_dir / 'report.md',
                             f'Experiment {config.name}', sections)


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
