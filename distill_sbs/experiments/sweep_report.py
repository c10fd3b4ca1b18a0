"""A sweep's report: CSVs, plots and report.md from its finished runs.

`results.csv` (one row per run), `summary.csv` (mean/std over seeds; the
headline accuracy and test ECE side by side), plots (accuracy vs data fraction
and size, training curves, reliability diagrams of the largest-fraction
first-seed run of each method from its `test_predictions.jsonl`), `report.md`.
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

from distill_sbs.experiments import aggregate
from distill_sbs.experiments import plots
from distill_sbs.experiments import report
from distill_sbs.experiments import runs as runs_lib
from distill_sbs.experiments import sweep_plan

SIZES_ORDER = ('tiny', 'small', 'base', 'large', 'xl', 'xxl')


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


def write_outputs(config: sweep_plan.SweepConfig) -> dict[str, pathlib.Path]:
  """Aggregates finished runs into CSVs, plots and report.md; returns the paths."""
  planned = sweep_plan.plan(config)
  done = [(r.spec, r.model_dir) for r in planned
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
        summary, out / 'accuracy_vs_size.png', sizes, metric, max(config.fractions),
        size_labels=[plots.size_label(config.model_gin, s) for s in sizes])
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


def reliability_panels(config: sweep_plan.SweepConfig,
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
  order = [m.name for m in config.resolved_methods()]
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


def _write_report(config: sweep_plan.SweepConfig, summary, metric: str,
                  paths: Mapping[str, pathlib.Path], n_done: int,
                  no_predictions: Sequence[str] = ()) -> pathlib.Path:
  planned = sweep_plan.plan(config)
  first_size = {r.spec.method: r for r in planned
                if r.spec.size == config.sizes[0] and r.spec.fraction == max(config.fractions)}
  methods = [first_size[m.name] for m in config.resolved_methods()]
  order = {r.method.name: i for i, r in enumerate(methods)}
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
          f' seeds: {", ".join(map(str, config.seeds))}; train steps: '
          f'{", ".join(sorted({str(r.train_steps) for r in planned}))}',
          f'- parts: model `{config.model_gin}`, run `{config.run_gin}`, dataset '
          f'`{config.dataset_gin}`' + (f', then {", ".join(config.gin_files)}'
                                       if config.gin_files else ''),
          f'- runs finished: {n_done} of {n_planned}',
          f'- extra bindings: {", ".join(config.bindings) or "none"}'])),
      ('Methods', '\n'.join(f'- `{r.method.name}`: {r.method.description} (task '
                            f'`{r.task}`, tested on `{r.test_task}`, method part '
                            f'`{r.method.gin_file}`)' for r in methods)),
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
