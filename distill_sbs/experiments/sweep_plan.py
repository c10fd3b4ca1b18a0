"""A sweep's plan: the grid of runs, each an experiment composed from parts.

One run = model size part (`model_gin`, `{size}` filled) + run part (`run_gin`)
+ method part (`methods.Method.gin_file`) + dataset part (`dataset_gin`), then
the sweep's own extra `gin_files`, as `--gin_file` flags of
`python -m distill_sbs.train` in that order; its bindings are MODEL_DIR,
RANDOM_SEED, TRAIN_STEPS (when the sweep sets one), the data fraction's task and
the sweep's and method's extra bindings. The training task, test task and step
count are read from the composed files (`gin_macros.read_macros`): the gin
files are the only place that says what a method trains on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import sys
from typing import Any, Mapping, Optional, Sequence

import gin

from distill_sbs.experiments import methods as methods_lib
from distill_sbs.experiments import runs as runs_lib
from distill_sbs.training import gin_macros

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EVAL_FN = 'distill_sbs.experiments.evaluate.run_student_eval'


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """One experiment grid: sizes × methods × data fractions × seeds.

  Attributes:
    name: experiment name (report title; default output dir).
    dataset: prepared dataset name (cqa, svamp, esnli, anli1).
    sizes: model sizes; `{size}` in `model_gin`. One sweep may hold T5 and
      decoder-only students: `model_gin='t5x_configs/models/{size}.gin'` with
      family-qualified sizes ('t5_1_1/tiny', 'qwen3/tiny'); the plots name the
      family (`plots.size_label`).
    methods: method names (`methods.METHODS`) in plot/table order.
    fractions: fractions of the training data in (0, 1].
    seeds: RANDOM_SEED values; mean/std are taken over them.
    train_steps: TRAIN_STEPS of every run (None: the run part's).
    model_gin / run_gin / dataset_gin: the experiment's parts (templates with
      `{size}` / `{dataset}`); the method part comes from the method.
    gin_files: more gin files after the four parts (e.g. a student shape).
    output_dir: where runs and the report go ('' = runs/sweeps/{name}).
    bindings: extra `KEY=VALUE` gin bindings for every run (e.g. BATCH_SIZE=8);
      `{dataset}` and `{size}` are filled per run (e.g.
      `INITIAL_CHECKPOINT_PATH='/ckpt/t5-v1_1-{size}'`).
    method_overrides: method name -> {field: value} (see `methods.Method`).
    env: environment variables of every run (e.g. DISTILL_SBS_DATA_DIR).
    train_command: argv prefix of the trainer.
    eval_command: argv prefix of the test evaluation after training (empty:
      none); it gets the run's gin files and bindings plus `run_student_eval`
      bindings and must write `MODEL_DIR/eval_results.json`.
    eval_bindings: extra `KEY=VALUE` bindings of the evaluation only.
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
  train_steps: Optional[int] = None
  model_gin: str = 't5x_configs/models/t5_1_1/{size}.gin'
  run_gin: str = 'gin/runs/cpu.gin'
  dataset_gin: str = 'gin/datasets/{dataset}.gin'
  gin_files: Sequence[str] = ()
  output_dir: str = ''
  bindings: Sequence[str] = ()
  method_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=dict)
  env: Mapping[str, str] = dataclasses.field(default_factory=dict)
  train_command: Sequence[str] = (sys.executable, '-m', 'distill_sbs.train')
  eval_command: Sequence[str] = (sys.executable, '-m', 'distill_sbs.experiments.evaluate')
  eval_bindings: Sequence[str] = ()
  metric: str = ''
  keep_going: bool = False

  def __post_init__(self):
    for f in ('sizes', 'methods', 'fractions', 'seeds', 'bindings', 'gin_files',
              'train_command', 'eval_command', 'eval_bindings'):
      object.__setattr__(self, f, tuple(getattr(self, f)))
    object.__setattr__(self, 'fractions', tuple(float(x) for x in self.fractions))
    object.__setattr__(self, 'seeds', tuple(int(x) for x in self.seeds))
    object.__setattr__(self, 'env', dict(self.env))
    for fr in self.fractions:
      runs_lib.format_fraction(fr)  # validates (0, 1]
    if not self.methods or not self.sizes or not self.seeds or not self.fractions:
      raise ValueError(f'SweepConfig {self.name!r}: methods, sizes, fractions and '
                       'seeds must all be non-empty')
    if self.train_steps is not None and self.train_steps <= 0:
      raise ValueError(f'SweepConfig.train_steps must be > 0, got {self.train_steps}')
    for b in (*self.bindings, *self.eval_bindings):
      if '=' not in b:
        raise ValueError(f'SweepConfig.bindings: {b!r} is not KEY=VALUE')
    methods_lib.resolve(self.methods, self.method_overrides)  # validates

  @property
  def out_dir(self) -> pathlib.Path:
    return pathlib.Path(self.output_dir or os.path.join('runs', 'sweeps', self.name))

  def resolved_methods(self) -> list[methods_lib.Method]:
    return methods_lib.resolve(self.methods, self.method_overrides)


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One grid point: what it trains, with which command, where."""
  spec: runs_lib.RunSpec
  method: methods_lib.Method
  model_dir: pathlib.Path
  gin_files: tuple[str, ...]
  task: str           # MIXTURE_OR_TASK_NAME (the fraction's task below 1.0)
  test_task: str      # TEST_TASK: the label task tested after training
  train_steps: int
  train_argv: tuple[str, ...]
  eval_argv: tuple[str, ...]
  signature: str


def gin_str(s: str) -> str:
  return json.dumps(str(s))


def resolve_gin_file(path: str) -> str:
  """`path` as given when it exists (or is absolute), else under the repo root."""
  p = pathlib.Path(path)
  if p.is_absolute() or p.exists() or not (REPO_ROOT / p).exists():
    return str(p)
  return str(REPO_ROOT / p)


def compose(config: SweepConfig, method: methods_lib.Method, size: str) -> tuple[str, ...]:
  """The run's gin files: model size, run, method, dataset, then extras."""
  keys = {'dataset': config.dataset, 'size': size}
  parts = (config.model_gin, config.run_gin, method.gin_file, config.dataset_gin,
           *config.gin_files)
  return tuple(resolve_gin_file(methods_lib.fill_template(p, keys)) for p in parts)


def _macro(macros: Mapping[str, Any], name: str, files: Sequence[str], kind: type) -> Any:
  value = macros.get(name)
  if not isinstance(value, kind):
    raise ValueError(f'{name} is {value!r} in the composition {list(files)}; the method '
                     f'and dataset parts must set it to a {kind.__name__}')
  return value


def eval_flags(test_task: str, dataset: str, extra: Sequence[str] = ()) -> list[str]:
  """The test evaluation's own bindings (see `evaluate.run_student_eval`)."""
  return [f'--gin.{EVAL_FN}.model=%MODEL', f'--gin.{EVAL_FN}.model_dir=%MODEL_DIR',
          f'--gin.{EVAL_FN}.eval_task={gin_str(test_task)}',
          f'--gin.{EVAL_FN}.dataset={gin_str(dataset)}',
          f'--gin.{EVAL_FN}.task_feature_lengths=%TASK_FEATURE_LENGTHS',
          *(f'--gin.{b}' for b in extra)]


def plan_run(config: SweepConfig, method: methods_lib.Method, size: str,
             fraction: float, seed: int) -> PlannedRun:
  """One grid point (see module doc)."""
  m = method.fill(config.dataset, size)
  keys = {'dataset': config.dataset, 'size': size}
  extra = [methods_lib.fill_template(b, keys) for b in (*config.bindings, *m.bindings)]
  if config.train_steps is not None:
    extra.insert(0, f'TRAIN_STEPS={int(config.train_steps)}')
  files = compose(config, m, size)
  macros = gin_macros.read_macros(files, extra)
  task = m.train_task(_macro(macros, 'MIXTURE_OR_TASK_NAME', files, str), fraction)
  test_task = _macro(macros, 'TEST_TASK', files, str)
  steps = _macro(macros, 'TRAIN_STEPS', files, int)
  spec = runs_lib.RunSpec(config.dataset, size, m.name, fraction, seed)
  model_dir = (config.out_dir / 'runs' / spec.run_id).resolve()
  args = [f'--gin_file={f}' for f in files]
  args += [f'--gin.MODEL_DIR={gin_str(str(model_dir))}', f'--gin.RANDOM_SEED={int(seed)}']
  if fraction < 1.0:
    args.append(f'--gin.MIXTURE_OR_TASK_NAME={gin_str(task)}')
  args += [f'--gin.{b}' for b in extra]
  train_argv = (*config.train_command, *args)
  eval_argv = ((*config.eval_command, *args,
                *eval_flags(test_task, config.dataset, config.eval_bindings))
               if config.eval_command else ())
  # The signature: what the run computes, not where files live.
  rel = [os.path.relpath(f, REPO_ROOT) if f.startswith(str(REPO_ROOT)) else f for f in files]
  sig_src = json.dumps([rel, task, test_task, extra, steps, list(config.eval_command[1:]),
                        list(config.eval_bindings)])
  signature = hashlib.sha256(sig_src.encode()).hexdigest()[:16]
  return PlannedRun(spec, m, model_dir, files, task, test_task, steps, train_argv,
                    eval_argv, signature)


def plan(config: SweepConfig) -> list[PlannedRun]:
  """Every grid point in order: size, method, fraction, seed."""
  return [plan_run(config, method, size, fraction, seed)
          for size in config.sizes
          for method in config.resolved_methods()
          for fraction in config.fractions
          for seed in config.seeds]
