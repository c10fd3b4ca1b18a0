"""The methods an experiment compares: each is a method part, `gin/methods/{name}.gin`.

An experiment is model size + run + method + dataset (gin/runs/cpu.gin); a
comparison of methods changes only the method part, so every method of a sweep
shares steps, batch, lengths and learning rate unless the experiment says
otherwise (`SweepConfig.method_overrides[name]['bindings']`). What a method
trains on and is tested on is in its gin file (MIXTURE_OR_TASK_NAME, TEST_TASK,
by kind from the dataset part), read by the sweep's plan, not repeated here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import gin

from distill_sbs.data import splits

METHOD_GIN = 'gin/methods/{name}.gin'


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Method:
  """One method of a comparison.

  Attributes:
    name: short id used in run dirs, CSVs and plots.
    description: one line for report.md.
    gin_file: the method part (default `gin/methods/{name}.gin`).
    fraction_task: the training task of a data fraction < 1 (`{task}`: the
      method's MIXTURE_OR_TASK_NAME; `{frac}`: '12p5pct').
    bindings: extra `KEY=VALUE` gin bindings of this method only (`{dataset}`,
      `{size}` filled per run).
  """
  name: str
  description: str
  gin_file: str = ''
  fraction_task: str = '{task}_{frac}'
  bindings: tuple[str, ...] = ()

  def __post_init__(self):
    if not self.gin_file:
      object.__setattr__(self, 'gin_file', METHOD_GIN.format(name=self.name))
    object.__setattr__(self, 'bindings', tuple(
        [self.bindings] if isinstance(self.bindings, str) else self.bindings))

  def fill(self, dataset: str, size: str) -> 'Method':
    keys = dict(dataset=dataset, size=size)
    return dataclasses.replace(
        self, gin_file=fill_template(self.gin_file, keys),
        bindings=tuple(fill_template(b, keys) for b in self.bindings))

  def train_task(self, task: str, fraction: float) -> str:
    """The training task for a data fraction (`task` at 1.0)."""
    if fraction >= 1.0:
      return task
    pct = float(fraction) * 100
    return fill_template(self.fraction_task, dict(task=task, frac=splits.fraction_name(pct)))


def fill_template(template: str, keys: Mapping[str, str]) -> str:
  """Replaces only `{key}` of known keys (gin dict literals keep their braces)."""
  for k, v in keys.items():
    template = template.replace('{' + k + '}', v)
  return template


METHODS: dict[str, Method] = {m.name: m for m in (
    Method('standard_finetune', 'standard finetuning on gold labels'),
    Method('standard_distill', 'standard distillation on teacher (LLM) labels'),
    Method('sbs_gold', 'distilling step-by-step: gold label + teacher rationale '
           '(paired α-weighted objective)'),
    Method('sbs_llm', 'distilling step-by-step: teacher label + teacher rationale '
           '(paired α-weighted objective)'),
    Method('rationale_output', 'single task: rationale then label as one output'),
    Method('first', 'FIRST: KL to the calibrated teacher top-k on its answers'),
    Method('first_rationale', 'FIRST + rationales (top-k KL label + explain task)'),
    Method('first_cross_tokenizer', 'FIRST from a teacher in another tokenizer (top-k '
           'carried onto the student vocabulary; ULD on unaligned tokens)'),
)}
PAIRED_MARKER = '_paired_'  # tasks whose every example gives two rows


def resolve(names: Sequence[str],
            overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[Method]:
  """Methods by name, with per-field overrides (a new name needs a description)."""
  overrides = dict(overrides or {})
  fields = {f.name for f in dataclasses.fields(Method)}
  out = []
  for name in names:
    over = dict(overrides.get(name, {}))
    bad = set(over) - fields
    if bad:
      raise ValueError(f'method_overrides[{name!r}]: unknown fields {sorted(bad)} '
                       f'(known: {sorted(fields - {"name"})})')
    if 'bindings' in over:
      over['bindings'] = tuple([over['bindings']] if isinstance(over['bindings'], str)
                               else over['bindings'])
    base = METHODS.get(name)
    if base is None:
      if 'description' not in over:
        raise ValueError(
            f'unknown method {name!r} (known: {sorted(METHODS)}); a new method needs '
            f'method_overrides[{name!r}] with a description (and gin_file unless '
            f'{METHOD_GIN.format(name=name)} exists)')
      out.append(Method(name=name, **over))
    else:
      out.append(dataclasses.replace(base, **over))
  return out
