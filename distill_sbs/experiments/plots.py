"""Report figures (PNG, matplotlib Agg): curves, accuracy bars, data efficiency.

Every function takes plain rows/records and a path, writes one PNG and returns
the path; none needs a display.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from distill_sbs.experiments import runs as runs_lib  # noqa: E402
from distill_sbs.metrics import calibration  # noqa: E402


def _save(fig, path: os.PathLike | str) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_training_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]],
                         path: os.PathLike | str,
                         keys: Sequence[str] = ('loss', 'accuracy')) -> pathlib.Path:
  """One panel per metric key, one line per run (label -> metrics records)."""
  keys = [k for k in keys if any(runs_lib.series(r, k)[0] for r in curves.values())]
  if not keys:
    raise ValueError(f'no run holds any of the keys to plot ({list(curves)})')
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
  for ax, key in zip(axes[0], keys):
    for label, records in curves.items():
      steps, values = runs_lib.series(records, key)
      if steps:
        ax.plot(steps, values, label=label, marker='.' if len(steps) < 30 else None)
    ax.set_xlabel('step')
    ax.set_ylabel(key)
    ax.set_title(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  return _save(fig, path)


def plot_metric_by_method(rows: Sequence[Mapping[str, Any]], path: os.PathLike | str,
                          metric: str = 'test_accuracy',
                          title: Optional[str] = None) -> pathlib.Path:
  """Bars per method: `{metric}_mean` ± `{metric}_std` (summary rows) or `metric`."""
  labels, means, stds = [], [], []
  for r in rows:
    if runs_lib.is_number(r.get(f'{metric}_mean')):
      mean, std = float(r[f'{metric}_mean']), float(r.get(f'{metric}_std', 0.0))
    elif runs_lib.is_number(r.get(metric)):
      mean, std = float(r[metric]), 0.0
    else:
      continue
    labels.append(str(r['method']))
    means.append(mean)
    stds.append(std)
  if not labels:
    raise ValueError(f'no row holds {metric!r}')
  fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(labels) + 1), 3.6))
  xs = np.arange(len(labels))
  bars = ax.bar(xs, means, yerr=stds, capsize=4, color=[f'C{i}' for i in range(len(labels))])
  for b, m in zip(bars, means):
    ax.annotate(f'{m:.3f}', (b.get_x() + b.get_width() / 2, m), ha='center',
                va='bottom', fontsize=8, xytext=(0, 2), textcoords='offset points')
  ax.set_xticks(xs, labels, rotation=20, ha='right', fontsize=8)
  ax.set_ylabel(metric)
  ax.set_title(title or f'{metric} by method')
  ax.grid(axis='y', alpha=0.3)
  return _save(fig, path)


def _panels(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
  return sorted({(str(r['dataset']), str(r['size'])) for r in rows})


def _method_lines(ax, summary: Sequence[Mapping[str, Any]], metric: str, keep, x_of, *,
                  xlabel: str, title: str) -> None:
  """One error-bar line (mean ± std of `metric` against `x_of(row)`) per method
  among the rows `keep` selects, on a labelled, gridded axis."""
  rows = [r for r in summary if keep(r) and runs_lib.is_number(r.get(f'{metric}_mean'))]
  methods = sorted({str(r['method']) for r in summary if keep(r)})
  for i, method in enumerate(methods):
    pts = sorted((x_of(r), float(r[f'{metric}_mean']), float(r.get(f'{metric}_std', 0.0)))
                 for r in rows if str(r['method']) == method)
    if pts:
      x, y, e = map(np.array, zip(*pts))
      ax.errorbar(x, y, yerr=e, marker='o', capsize=3, label=method, color=f'C{i}')
  ax.set_xlabel(xlabel)
  ax.set_ylabel(metric)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def plot_metric_vs_fraction(summary: Sequence[Mapping[str, Any]], path: os.PathLike | str,
                            metric: str = 'test_accuracy') -> pathlib.Path:
  """The paper's data-efficiency figure: metric vs % of training data, per method."""
  panels = _panels(summary)
  if not panels:
    raise ValueError('no rows to plot')
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
  for ax, (ds, size) in zip(axes[0], panels):
    _method_lines(ax, summary, metric,
                  lambda r, p=(ds, size): (str(r['dataset']), str(r['size'])) == p,
                  lambda r: float(r['fraction']) * 100,
                  xlabel='% of training data', title=f'{ds} ({size})')
    ax.set_xscale('log', base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
  return _save(fig, path)


# Model families by their folder under t5x_configs/models/.
FAMILY_NAMES = {'t5_1_1': 'T5 v1.1', 't5': 'T5', 'flan_t5': 'Flan-T5', 'llama': 'Llama',
                'qwen3': 'Qwen3', 'gemma3': 'Gemma 3'}


def size_label(model_gin: str, size: str) -> str:
  """'Qwen3 tiny' for the model part `model_gin` (a `{size}` template, e.g.
  't5x_configs/models/{size}.gin' with size 'qwen3/tiny', or
  't5x_configs/models/t5_1_1/{size}.gin' with 'tiny'): the family and size."""
  path = pathlib.PurePosixPath(model_gin.replace('{size}', size))
  family, name = path.parent.name, path.stem
  return f'{FAMILY_NAMES.get(family, family)} {name}' if family else name


def plot_metric_vs_size(summary: Sequence[Mapping[str, Any]], path: os.PathLike | str,
                        sizes_order: Sequence[str], metric: str = 'test_accuracy',
                        fraction: float = 1.0,
                        size_labels: Optional[Sequence[str]] = None) -> pathlib.Path:
  """Metric vs model size (at one data fraction), one line per method; the
  x axis names each size with its family (`size_labels`, e.g. from
  `size_label`), so a sweep over T5 and decoder-only students reads right."""
  datasets = sorted({str(r['dataset']) for r in summary})
  sizes = list(sizes_order)
  fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
  for ax, ds in zip(axes[0], datasets):
    _method_lines(ax, summary, metric,
                  lambda r, d=ds: (str(r['dataset']) == d and str(r['size']) in sizes
                                   and abs(float(r['fraction']) - fraction) < 1e-9),
                  lambda r: sizes.index(str(r['size'])),
                  xlabel='model size', title=f'{ds} ({format_pct(fraction)}% data)')
    ax.set_xticks(range(len(sizes)), list(size_labels or sizes), rotation=15)
  return _save(fig, path)


def format_pct(fraction: float) -> str:
  return runs_lib.format_fraction(fraction)


def plot_reliability(panels: Mapping[str, tuple[Sequence[float], Sequence[bool]]],
                     path: os.PathLike | str, num_bins: int = 10,
                     ece: Optional[Mapping[str, float]] = None) -> pathlib.Path:
  """Reliability diagrams side by side: label -> (confidences, correct)."""
  if not panels:
    raise ValueError('no predictions to plot')
  fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.8),
                           squeeze=False)
  edges = np.linspace(0, 1, num_bins + 1)
  for ax, (label, (conf, corr)) in zip(axes[0], panels.items()):
    bins = calibration.reliability_bins(conf, corr, num_bins=num_bins)
    mean_conf, acc, count = bins['confidence'], bins['accuracy'], bins['count']
    nonempty = count > 0
    ax.bar(edges[:-1][nonempty], acc[nonempty], width=1 / num_bins, align='edge',
           edgecolor='k', alpha=0.7, label='accuracy')
    ax.plot([0, 1], [0, 1], 'k--', lw=1, label='perfect calibration')
    ax.plot(mean_conf[nonempty], acc[nonempty], 'ro', ms=3, label='mean confidence')
    title = label if not ece or label not in ece else f'{label}\nECE={ece[label]:.3f}'
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('confidence')
    ax.set_ylabel('accuracy')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc='upper left')
  return _save(fig, path)
