"""The methods an experiment compares, as gin files + task + bindings for train.

Each method is one ordinary `distill_sbs.train` run; `{dataset}`, `{size}`,
`{pct}` ('12.5') and `{frac}` ('12p5pct', `data.splits.fraction_name`, the
suffix of the data-fraction tasks) in the templates are filled per run. Experiment gins can override or add
methods with `SweepConfig.method_overrides`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import gin

from distill_sbs.data import splits


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Method:
  """How to train one method.

  Attributes:
    name: short id used in run dirs, CSVs and plots.
    description: one line for report.md.
    gin_files: gin file templates passed as `--gin_file`.
    task: MIXTURE_OR_TASK_NAME template (full training data).
    fraction_task: task template for a data fraction < 1 (`{task}`: the filled
      `task`; `{frac}`: '12p5pct').
    bindings: extra `KEY=VALUE` gin bindings (templates).
    eval_task: the label task the student is tested on (its test split, with
      the input prefix the student was trained with).
  """
  name: str
  description: str
  gin_files: tuple[str, ...]
  task: str
  fraction_task: str = '{task}_{frac}'
  bindings: tuple[str, ...] = ()
  eval_task: str = 'sbs_{dataset}_label_gold'

  def fill(self, dataset: str, size: str, fraction: float) -> 'Method':
    pct = float(fraction) * 100
    keys = dict(dataset=dataset, size=size, pct=f'{round(pct, 6):g}',
                frac=splits.fraction_name(pct))
    fmt = lambda s: fill_template(s, keys)
    task = fmt(self.task)
    return dataclasses.replace(
        self, gin_files=tuple(fmt(g) for g in self.gin_files), task=task,
        fraction_task=fill_template(self.fraction_task, dict(keys, task=task)),
        bindings=tuple(fmt(b) for b in self.bindings), eval_task=fmt(self.eval_task))


def fill_template(template: str, keys: Mapping[str, str]) -> str:
  """Replaces only `{key}` of known keys (gin dict literals keep their braces)."""
  for k, v in keys.items():
    template = template.replace('{' + k + '}', v)
  return template


_SBS = 'gin/sbs/{dataset}_{size}.gin'
_BASE = 'gin/baselines/{dataset}_{kind}_{size}.gin'
METHODS: dict[str, Method] = {m.name: m for m in (
    Method('standard_finetune', 'standard finetuning on gold labels',
           (_BASE.replace('{kind}', 'finetune'),), 'sbs_{dataset}_label_gold'),
    Method('standard_distill', 'standard distillation on teacher (LLM) labels',
           (_BASE.replace('{kind}', 'distill'),), 'sbs_{dataset}_label_llm'),
    Method('sbs_gold', 'distilling step-by-step: gold label + teacher rationale '
           '(paired α-weighted objective)',
           (_SBS,), 'sbs_{dataset}_paired_gold', eval_task='sbs_{dataset}_predict_gold'),
    Method('sbs_llm', 'distilling step-by-step: teacher label + teacher rationale '
           '(paired α-weighted objective)',
           (_SBS,), 'sbs_{dataset}_paired_llm', eval_task='sbs_{dataset}_predict_gold'),
    Method('rationale_output', 'single task: rationale then label as one output',
           (_BASE.replace('{kind}', 'cot'),), 'sbs_{dataset}_cot',
           eval_task='sbs_{dataset}_cot'),
    Method('first', 'FIRST: KL to the calibrated teacher top-k on its answers',
           ('gin/first/{dataset}_{size}.gin',), 'first_{dataset}_label'),
    Method('first_rationale', 'FIRST + rationales (top-k KL label + explain task)',
           ('gin/first/{dataset}_{size}_rationale.gin',), 'first_{dataset}_rationale',
           eval_task='sbs_{dataset}_predict_gold'),
)}
PAIRED_MARKER = '_paired_'  # tasks whose every example gives two rows


def resolve(names: Sequence[str],
            overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[Method]:
  """Methods by name, with per-field overrides (new names need all fields)."""
  overrides = dict(overrides or {})
  out = []
  for name in names:
    base = METHODS.get(name)
    over = dict(overrides.get(name, {}))
    for key in ('gin_files', 'bindings'):
      if key in over:
        over[key] = tuple([over[key]] if isinstance(over[key], str) else over[key])
    if base is None:
      try:
        out.append(Method(name=name, **over))
      except TypeError as e:
        raise ValueError(
            f'unknown method {name!r} (known: {sorted(METHODS)}); a new method '
            f'needs method_overrides[{name!r}] with description, gin_files, task'
        ) from e
    else:
      bad = set(over) - {f.name for f in dataclasses.fields(Method)}
      if bad:
        raise ValueError(f'method_overrides[{name!r}]: unknown fields {sorted(bad)}')
      out.append(dataclasses.replace(base, **over))
  return out
