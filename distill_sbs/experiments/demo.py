"""`make demo` / `python -m distill_sbs.experiments.demo`: the method on one benchmark.

On CPU, with no configuration: find the paper's data (`data_fetch`), prepare one
dataset, train a small SentencePiece vocabulary on its training text, train a
tiny T5 student twice under the same budget (same steps, batch, model) —
standard finetuning on gold labels, and distilling step-by-step (gold labels +
PaLM rationales, multi-task) — evaluate both on the test split (accuracy and
ECE), and write `report.md`, `results.csv` and PNG plots to the report dir.
Trainings are ordinary `distill_sbs.train` runs (via the sweep machinery), so a
rerun skips what already finished; `--fresh` starts over.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import sys
import time
import typing
from typing import Any, Callable, Optional, Sequence

from distill_sbs.experiments import aggregate
from distill_sbs.experiments import data_fetch
from distill_sbs.experiments import evaluate as evaluate_lib
from distill_sbs.experiments import methods as methods_lib
from distill_sbs.experiments import plots
from distill_sbs.experiments import pretrained as pretrained_lib
from distill_sbs.experiments import report
from distill_sbs.experiments import runs as runs_lib
from distill_sbs.experiments import sweep

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO_GIN = 'gin/experiments/demo.gin'
SCRATCH_LEARNING_RATE = 0.01    # the tiny student from scratch
PRETRAINED_LEARNING_RATE = 0.001  # T5X's fine-tuning rate (Adafactor, constant)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """What the demo runs (defaults: the `make demo` budget on 2 CPU cores).

  Attributes:
    dataset: benchmark (cqa, svamp, esnli, anli1).
    methods: the compared methods (`methods.METHODS` names).
    train_steps / batch_size: the shared budget of every method: steps and
      training examples per step (a paired step-by-step example gives a label
      row and a rationale row, so its batch holds 2 × batch_size rows).
    learning_rate: constant learning rate (Adafactor, as the gin file says);
      None: SCRATCH_LEARNING_RATE, or PRETRAINED_LEARNING_RATE with `pretrained`.
    input_length / target_length: TASK_FEATURE_LENGTHS (SentencePiece tokens)
      of tasks with rationales; label_length: targets of label-only tasks.
    vocab_size: SentencePiece pieces ('0' = bytes, no SentencePiece); unused
      with `pretrained` (the checkpoint's vocabulary).
    max_train_examples / max_test_examples: data caps (None = all).
    work_dir: prepared data, vocabulary and run dirs.
    report_dir: report.md, results.csv, PNGs.
    seed: RANDOM_SEED of both runs.
    gin_file: the student gin both methods train with, after the experiment's
      parts (tiny model size, gin/runs/cpu.gin, the method, the dataset).
    extra_bindings: more `KEY=VALUE` gin bindings for both runs.
    pretrained: a Hugging Face T5 v1.1 / Flan-T5 directory (config.json,
      model.safetensors, spiece.model) both methods start from, with its shape
      and vocabulary instead of the tiny from-scratch student.
  """
  dataset: str = 'esnli'
  methods: Sequence[str] = ('standard_finetune', 'sbs_gold')
  train_steps: int = 800
  batch_size: int = 32
  learning_rate: Optional[float] = None
  input_length: int = 72
  target_length: int = 40
  label_length: int = 8
  vocab_size: int = 2000
  max_train_examples: Optional[int] = None
  max_test_examples: Optional[int] = 1000
  work_dir: str = 'runs/demo'
  report_dir: str = 'reports/demo'
  seed: int = 0
  gin_file: str = DEMO_GIN
  extra_bindings: Sequence[str] = ()
  pretrained: Optional[str] = None

  @property
  def lr(self) -> float:
    if self.learning_rate is not None:
      return self.learning_rate
    return PRETRAINED_LEARNING_RATE if self.pretrained else SCRATCH_LEARNING_RATE

  @property
  def size(self) -> str:
    """The run ids' size label."""
    return 'pretrained' if self.pretrained else 'tiny'

  def bindings(self) -> list[str]:
    """Gin bindings shared by every method."""
    init = []
    if self.pretrained:
      path = str(pathlib.Path(self.pretrained).expanduser().resolve())
      init = [f'INITIAL_CHECKPOINT_PATH={path!r}']
    # PACK=False: a row is one example's label or rationale, so both methods
    # see the same examples per step (packing would fill label rows with more).
    # ALLOW_TRUNCATION: the CPU budget's short lengths cut long rationales, knowingly.
    return [f'LEARNING_RATE={self.lr}', *init, f'BATCH_SIZE={self.batch_size}', 'PACK=False',
            'ALLOW_TRUNCATION=True',
            f'INPUTS_LENGTH={self.input_length}', f'LABEL_LENGTH={self.label_length}',
            f'RATIONALE_LENGTH={self.target_length}',
            f'EVAL_PERIOD={max(1, self.train_steps // 4)}',
            f'CHECKPOINT_PERIOD={self.train_steps}',
            f'LOG_PERIOD={max(1, self.train_steps // 40)}',
            'train_loop.train.infer_eval_dataset_cfg=None',  # the demo tests itself
            *self.extra_bindings]



def _stage(i: int, n: int, what: str, log: Callable[[str], None]) -> float:
  log(f'\n[{i}/{n}] {what}')
  return time.monotonic()


def prepare_data(cfg: DemoConfig, log: Callable[[str], None]) -> pathlib.Path:
  """Prepared records in `{work_dir}/data/{dataset}` (reused when present)."""
  from distill_sbs.data import prepare  # pylint: disable=g-import-not-at-top
  data_dir = pathlib.Path(cfg.work_dir).resolve() / 'data'
  manifest = data_dir / cfg.dataset / 'manifest.json'
  if manifest.exists():
    log(f'  prepared data found: {manifest.parent}')
    return data_dir
  raw = data_fetch.resolve_raw_dir(cfg.dataset, log=lambda s: log('  ' + s))
  m = prepare.prepare_dataset(str(raw), cfg.dataset, str(data_dir),
                              max_rows=cfg.max_train_examples)
  for split, s in m['splits'].items():
    acc = s.get('teacher_accuracy')
    log(f'  {split:10s} {s["rows"]:6d} rows' +
        (f'  (teacher label accuracy {acc:.1f}%)' if acc is not None else ''))
  return data_dir


def train_vocabulary(cfg: DemoConfig, data_dir: pathlib.Path,
                     log: Callable[[str], None]) -> Optional[pathlib.Path]:
  """A SentencePiece model on the training split (None: byte vocabulary)."""
  if not cfg.vocab_size:
    log('  byte vocabulary (vocab_size=0)')
    return None
  from distill_sbs.experiments import spm  # pylint: disable=g-import-not-at-top
  prefix = pathlib.Path(cfg.work_dir).resolve() / 'vocab' / f'{cfg.dataset}_{cfg.vocab_size}'
  model = pathlib.Path(f'{prefix}.model')
  if model.exists():
    log(f'  vocabulary found: {model}')
    return model
  records = read_records(data_dir / cfg.dataset, 'train')
  spm.train_spm(spm.record_texts(records), prefix, cfg.vocab_size)
  log(f'  trained {model} ({cfg.vocab_size} pieces + 100 extra ids) on '
      f'{len(records)} training records')
  return model


def read_records(ds_dir: pathlib.Path, split: str) -> list[dict[str, Any]]:
  from distill_sbs.data import schema  # pylint: disable=g-import-not-at-top
  return [r for f in schema.split_files(str(ds_dir), split) for r in schema.read_records(f)]


def vocab_total_size(spm_model: Optional[pathlib.Path]) -> int:
  """The model's vocabulary size: pieces + 100 extra ids (bytes: 359)."""
  from distill_sbs.data import vocab  # pylint: disable=g-import-not-at-top
  return int(vocab.get_vocabulary(str(spm_model) if spm_model else None).vocab_size)


def sweep_config(cfg: DemoConfig, spm_model: Optional[pathlib.Path],
                 data_dir: Optional[pathlib.Path] = None,
                 extra_gin_files: Sequence[str] = ()) -> sweep.SweepConfig:
  """The demo as a sweep: one size, fraction and seed; the data dir and the
  vocabulary reach the runs through `SweepConfig.env`."""
  # A pretrained student's gin file sets VOCAB_SIZE from its config.json.
  vocab_bindings = [] if cfg.pretrained else [f'VOCAB_SIZE={vocab_total_size(spm_model)}']
  eval_bindings = []
  if cfg.max_test_examples:
    eval_bindings.append(f'{sweep.EVAL_FN}.num_examples={cfg.max_test_examples}')
  env = {}
  if data_dir is not None:
    env['DISTILL_SBS_DATA_DIR'] = str(data_dir)
  env['DISTILL_SBS_SPM_PATH'] = str(spm_model) if spm_model else ''
  scfg = sweep.SweepConfig(
      name=f'demo_{cfg.dataset}', dataset=cfg.dataset, sizes=(cfg.size,),
      methods=tuple(cfg.methods), fractions=(1.0,), seeds=(cfg.seed,),
      train_steps=cfg.train_steps, model_gin='t5x_configs/models/t5_1_1/tiny.gin',
      gin_files=(cfg.gin_file, *extra_gin_files),
      output_dir=str(pathlib.Path(cfg.work_dir).resolve() / 'sweep'),
      bindings=tuple(cfg.bindings() + vocab_bindings), env=env,
      eval_bindings=tuple(eval_bindings))
  # Same examples per step for every method: a paired step-by-step example
  # gives two rows, so its batch holds 2 × batch_size rows.
  overrides = {r.spec.method: {'bindings': [f'BATCH_SIZE={2 * cfg.batch_size}']}
               for r in sweep.plan(scfg) if methods_lib.PAIRED_MARKER in r.task}
  return dataclasses.replace(scfg, method_overrides=overrides)


def write_demo_report(cfg: DemoConfig, scfg: sweep.SweepConfig,
                      timings: dict[str, float]) -> tuple[pathlib.Path, str]:
  """report.md, results.csv, PNGs; returns (report path, terminal table)."""
  out = pathlib.Path(cfg.report_dir)
  out.mkdir(parents=True, exist_ok=True)
  planned = sweep.plan(scfg)
  rows = aggregate.collect([(r.spec, r.model_dir) for r in planned])
  aggregate.write_csv(rows, out / 'results.csv')
  order = {r.spec.method: i for i, r in enumerate(planned)}
  rows = sorted(rows, key=lambda r: order[r['method']])
  curves = {r.spec.method: runs_lib.read_metrics(r.model_dir / runs_lib.METRICS_FILE)
            for r in planned}
  plots.plot_training_curves(curves, out / 'training_curves.png',
                             ('loss', 'validation/loss', 'accuracy'))
  plots.plot_metric_by_method(rows, out / 'accuracy_by_method.png', 'test_accuracy',
                              title=f'{cfg.dataset} test accuracy (%)')
  panels, eces = {}, {}
  for r in planned:
    panels[r.spec.method] = evaluate_lib.read_predictions(str(r.model_dir))
    eces[r.spec.method] = float(next(x for x in rows if x['method'] == r.spec.method)['test_ece'])
  plots.plot_reliability(panels, out / 'reliability.png', ece=eces)

  cols = ['method', 'test_accuracy', 'test_rank_accuracy', 'test_ece', 'test_brier',
          'test_mean_confidence', 'loss', 'final_step', 'train_seconds']
  cols = [c for c in cols if any(c in r for r in rows)]
  heads = {'test_accuracy': 'accuracy %', 'test_rank_accuracy': 'rank acc %',
           'test_ece': 'ECE', 'test_brier': 'Brier', 'test_mean_confidence': 'mean conf',
           'loss': 'final train loss', 'final_step': 'steps', 'train_seconds': 'train s'}
  headers = [heads.get(c, c) for c in cols]
  cell = lambda r, c: report.fmt_cell(r.get(c), 1 if c in (
      'test_accuracy', 'test_rank_accuracy', 'train_seconds') else 3)
  md = report.markdown_table(rows, cols, headers, cell)
  txt = report.text_table(rows, cols, headers, cell)
  base = next((r for r in rows if r['method'] == cfg.methods[0]), None)
  verdict = []
  for r in rows:
    if base is not None and r is not base and 'test_accuracy' in r and 'test_accuracy' in base:
      d = r['test_accuracy'] - base['test_accuracy']
      verdict.append(f'- `{r["method"]}` vs `{base["method"]}`: {d:+.1f} accuracy points, '
                     f'ECE {r.get("test_ece", float("nan")):.3f} vs {base.get("test_ece", float("nan")):.3f}.')
  n_test = int(rows[0].get('test_num_examples', 0)) if rows else 0
  sections = [
      ('What ran', '\n'.join([
          f'- dataset `{cfg.dataset}`, test examples: {n_test}; data from the paper\'s '
          'public release (gold labels + PaLM-540B chain-of-thought rationales).',
          _student_line(cfg),
          f'- same budget for every method: {cfg.train_steps} steps of {cfg.batch_size} '
          'training examples (step-by-step: each example gives a label row and a '
          'rationale row), '
          f'learning rate {cfg.lr}, seed {cfg.seed}; input length '
          f'{cfg.input_length}, target length {cfg.label_length} (labels) / '
          f'{cfg.target_length} (with rationales).',
          *(f'- `{r.method.name}`: {r.method.description} (train task `{r.task}`, '
            f'tested on `{r.test_task}`).' for r in planned),
          f'- wall time of this invocation {timings.get("total", float("nan")):.0f} s '
          '(runs that had finished before are reused; per-run training and '
          'evaluation seconds are in `results.csv`).'])),
      ('Results', md + '\n\n' + '\n'.join(verdict) + '\n\naccuracy: greedy decoding, '
       'normalised exact match (the paper\'s metric); rank acc: the candidate label '
       'with the highest sequence log-probability; ECE (10 equal-width bins) and Brier '
       'from the softmax over candidates (SVAMP: probability of the greedy output).'),
      ('Accuracy by method', report.image('accuracy_by_method.png', 'accuracy by method')),
      ('Training curves', report.image('training_curves.png', 'training curves') +
       '\n\nLoss and token accuracy of the training objective: for step-by-step it '
       'includes the rationale tokens, so its curves are not comparable in level with '
       'label-only training.'),
      ('Reliability diagrams', report.image('reliability.png', 'reliability diagrams')),
      ('Reading this', ('Both methods started from the same pretrained checkpoint, as '
       'in the paper (which used T5 220M–11B students); ' if cfg.pretrained else
       'A tiny student trained from scratch for minutes on 2 CPU cores is far '
       'from the paper\'s pretrained T5 (220M–11B) students (`--pretrained=DIR` starts '
       'both methods from a Flan-T5 / T5 v1.1 checkpoint); ') +
       'differences of a few points between two single-seed runs are within noise. Run the sweep '
       '(`python -m distill_sbs.experiments.sweep --gin_file=gin/experiments/'
       f'{cfg.dataset}_{"base" if cfg.pretrained else "tiny"}.gin`) for seeds and data '
       'fractions.'),
      ('Files', '`results.csv` (one row per run: the final value of every metric in its '
       '`metrics.jsonl`, `test_*` from its `eval_results.json`), run dirs under '
       f'`{scfg.out_dir}/runs/` (metrics.jsonl, config.gin, checkpoints, '
       'test_predictions.jsonl).'),
  ]
  path = report.write_report(out / 'report.md', f'Distilling step-by-step demo: {cfg.dataset}',
                             sections)
  return path, txt


def _student_line(cfg: DemoConfig) -> str:
  if cfg.pretrained:
    return (f'- student: pretrained checkpoint `{cfg.pretrained}` (shape from its config.json, '
            f'run gin `{cfg.gin_file}`), vocabulary: its {pretrained_lib.VOCAB_FILE}.')
  return (f'- student: tiny T5 v1.1-style encoder-decoder from scratch ({cfg.gin_file}), '
          'vocabulary: ' + (f'SentencePiece {cfg.vocab_size} pieces trained on the '
                            'training split' if cfg.vocab_size else 'bytes') + '.')


def run_demo(cfg: DemoConfig, *, fresh: bool = False,
             runner: sweep.Runner = sweep.subprocess_runner,
             log: Callable[[str], None] = lambda s: print(s, flush=True)) -> pathlib.Path:
  """Runs every stage; returns the report path."""
  return _run_demo(cfg, fresh, runner, log)


def _run_demo(cfg: DemoConfig, fresh: bool, runner: sweep.Runner,
              log: Callable[[str], None]) -> pathlib.Path:
  t_start = time.monotonic()
  timings: dict[str, float] = {}
  # A bad --pretrained directory fails before any data work.
  student = pretrained_lib.load(cfg.pretrained) if cfg.pretrained else None
  if fresh and pathlib.Path(cfg.work_dir).exists():
    shutil.rmtree(cfg.work_dir)
  n = 3 + len(cfg.methods)
  _stage(1, n, f'data: {cfg.dataset}', log)
  data_dir = prepare_data(cfg, log)
  _stage(2, n, 'student' if cfg.pretrained else 'vocabulary', log)
  extra_gin = []
  if student:
    gin_path = pretrained_lib.student_gin(
        student, pathlib.Path(cfg.work_dir).resolve() / 'pretrained_student.gin')
    extra_gin.append(str(gin_path))
    spm_model = student.vocab_model
    c = student.config
    log(f'  {student.path}: {c.num_encoder_layers}+{c.num_decoder_layers} layers, '
        f'emb {c.emb_dim}, vocabulary {spm_model.name} ({c.vocab_size} ids); run gin {gin_path}')
  else:
    spm_model = train_vocabulary(cfg, data_dir, log)
  timings['data'] = time.monotonic() - t_start
  scfg = sweep_config(cfg, spm_model, data_dir, extra_gin)
  for i, run in enumerate(sweep.plan(scfg)):
    _stage(3 + i, n, f'train + evaluate `{run.spec.method}` '
           f'({cfg.train_steps} steps; log {run.model_dir}/train.log)', log)
    one = dataclasses.replace(scfg, methods=(run.spec.method,))
    sweep.execute(one, runner=runner, log=lambda s: log('  ' + s))
  _stage(n, n, f'report: {cfg.report_dir}', log)
  timings['total'] = time.monotonic() - t_start
  path, table = write_demo_report(cfg, scfg, timings)
  log(f'\n{table}\n\nreport: {path.resolve()} ({timings["total"]:.0f} s)')
  return path


def parse_args(argv: Sequence[str]) -> tuple[DemoConfig, bool]:
  d = DemoConfig()
  p = argparse.ArgumentParser(prog='python -m distill_sbs.experiments.demo',
                              description=__doc__.split('\n')[0])
  hints = typing.get_type_hints(DemoConfig)
  for f in dataclasses.fields(DemoConfig):
    if f.name in ('methods', 'extra_bindings'):
      p.add_argument(f'--{f.name}', default=None,
                     help=f'comma-separated (default {",".join(getattr(d, f.name)) or "none"})')
    else:
      # Optional[X] -> X (the other member of the union is NoneType).
      kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)),
                  hints[f.name])
      p.add_argument(f'--{f.name}', type=kind, default=getattr(d, f.name))
  p.add_argument('--fresh', action='store_true', help='delete work_dir first')
  args = p.parse_args(argv)
  kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)}
  for k in ('methods', 'extra_bindings'):
    kw[k] = tuple(x for x in (kw[k] or '').split(',') if x) if kw[k] is not None \
        else getattr(d, k)
  return DemoConfig(**kw), args.fresh


def main(argv: Optional[Sequence[str]] = None) -> int:
  cfg, fresh = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    run_demo(cfg, fresh=fresh)
  except data_fetch.DataUnavailableError as e:
    print(f'\nerror: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
