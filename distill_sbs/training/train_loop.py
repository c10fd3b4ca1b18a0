"""`train()`: the gin-configured training run (T5X's `train.train`).

Resumes from the latest checkpoint in `MODEL_DIR` (state + data position),
else initialises (optionally from `INITIAL_CHECKPOINT_PATH`), then trains to
`TRAIN_STEPS` (absolute), checkpointing every `checkpoint_period`, running
inference evaluation and teacher-forced validation every `EVAL_PERIOD`, and
logging to `MODEL_DIR/metrics.jsonl` and TensorBoard.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Mapping, Optional

import gin
import jax
import numpy as np
from absl import logging

from distill_sbs.models import checkpoint_formats
from distill_sbs.training import checkpoints as ckpt_lib
from distill_sbs.training import config_checks
from distill_sbs.training import evaluation
from distill_sbs.training import input_pipeline
from distill_sbs.training import metrics_logging
from distill_sbs.training import partitioning
from distill_sbs.training import preemption
from distill_sbs.training import train_state as ts_lib
from distill_sbs.training import trainer as trainer_lib


def count_tokens(batch: Mapping[str, np.ndarray]) -> int:
  """Non-padding encoder + decoder tokens in a (local) batch (by segment ids
  where present: decoder-only rows, where id 0 may be a real token)."""
  n = 0
  for side, k in (('encoder', 'encoder_input_tokens'), ('decoder', 'decoder_target_tokens')):
    k = f'{side}_segment_ids' if f'{side}_segment_ids' in batch else k
    if k in batch:
      n += int(np.sum(np.asarray(batch[k]) > 0))
  return n


def _windowed(metrics: list[Mapping[str, Any]]) -> dict[str, float]:
  """Averages per-step metrics of a logging window; accuracy from token sums.

  Steps skipped by `skip_nonfinite_updates` count in `nonfinite_skipped` (a
  sum) and are left out of the other metrics when any step was kept."""
  if not metrics:
    return {}
  host = jax.device_get(metrics)
  skip = trainer_lib.SKIPPED_METRIC
  kept = [m for m in host if not float(np.asarray(m.get(skip, 0.0)))] or host
  out = {}
  for k in host[0]:
    if k in trainer_lib.FINITE_METRICS:
      continue
    if k == skip:
      out[k] = float(np.sum([float(np.asarray(m[k])) for m in host]))
      continue
    vals = [float(np.asarray(m[k])) for m in kept]
    out[k] = float(np.sum(vals)) if k in trainer_lib.SUMMED_METRICS else float(np.mean(vals))
  if out.get('real_tokens'):
    out['accuracy'] = out['correct_tokens'] / out['real_tokens']
  for k in trainer_lib.SUMMED_METRICS:
    out.pop(k, None)
  return out


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  """Raises `trainer.NonFiniteError` when step `step`'s flags say non-finite."""
  flags = jax.device_get({k: metrics[k] for k in trainer_lib.FINITE_METRICS
                          + ('loss', 'grad_norm')})
  if not all(float(flags[k]) for k in trainer_lib.FINITE_METRICS):
    raise trainer_lib.NonFiniteError(step, flags)


@gin.configurable(module='distill_sbs.training.train_loop')
def train(*, model: Any, train_dataset_cfg: input_pipeline.DatasetConfig, model_dir: str,
          total_steps: int,
          infer_eval_dataset_cfg: Optional[evaluation.EvalConfig] = None,
          validation_dataset_cfg: Optional[input_pipeline.DatasetConfig] = None,
          eval_period: int = 1000, eval_steps: int = 20,
          mesh_config: Optional[partitioning.MeshConfig] = None,
          num_microbatches: int = 1, random_seed: int = 0,
          initial_checkpoint_path: Optional[str] = None,
          assignment_map: Optional[checkpoint_formats.AssignmentMap] = None,
          checkpoint_period: int = 1000, keep_checkpoints: Optional[int] = 3,
          async_checkpointing: bool = True, log_period: int = 100,
          progress_bar: Optional[bool] = None,
          skip_nonfinite_updates: bool = False,
          allow_truncation: bool = False, length_check_examples: int = 1000,
          train_batches: Optional[Iterable[Mapping[str, np.ndarray]]] = None
          ) -> tuple[ts_lib.TrainState, trainer_lib.Trainer]:
  """Trains `model`; returns (final state, trainer).

  `train_batches` (tests / custom pipelines) replaces the seqio dataset with an
  iterable of process-local numpy batches (the resume position still applies).
  The first step with a non-finite loss or gradient norm raises
  `trainer.NonFiniteError` before anything of it is saved, unless
  `skip_nonfinite_updates` (then such updates are skipped and counted in the
  `nonfinite_skipped` metric).
  Before any work: a paired task needs an even per-host batch, the first
  `length_check_examples` training examples must fit `task_feature_lengths`
  (unless `allow_truncation`), and a Hugging Face `initial_checkpoint_path`
  must match the model gin (`config_checks`).
  SIGTERM / SIGINT: the current step finishes, a checkpoint is saved and
  `preemption.Preempted` (a `SystemExit` with code 75) is raised; a second
  signal aborts at once.
  """
  if total_steps is None or int(total_steps) < 0:
    raise ValueError(f'train.total_steps (TRAIN_STEPS) must be >= 0, got {total_steps!r}')
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  os.makedirs(model_dir, exist_ok=True)
  mesh_config = mesh_config or partitioning.MeshConfig()
  mesh = partitioning.create_mesh(mesh_config)
  rules = mesh_config.logical_axis_rules()
  logging.info('mesh %s over %d devices / %d processes', dict(mesh.shape),
               jax.device_count(), jax.process_count())

  if initial_checkpoint_path and hasattr(getattr(model, 'module', None), 'config'):
    config_checks.check_hf_config(os.path.abspath(os.path.expanduser(
        initial_checkpoint_path)), model.module.config)
  if train_batches is None:
    _check_config(model, train_dataset_cfg, allow_truncation, length_check_examples)

  # Data.
  if train_batches is None:
    ds = input_pipeline.get_dataset(train_dataset_cfg, model, num_epochs=None)
    input_shapes = input_pipeline.global_input_shapes(ds)
    make_iter = lambda pos: input_pipeline.BatchIterator(ds, pos)
  else:
    batches = list(train_batches)
    input_shapes = {k: (v.shape[0] * jax.process_count(),) + v.shape[1:]
                    for k, v in batches[0].items()}
    make_iter = lambda pos: _ListIterator(batches, pos)

  trainer = trainer_lib.Trainer(model, mesh, rules, input_shapes,
                                num_microbatches=num_microbatches, seed=random_seed,
                                skip_nonfinite_updates=skip_nonfinite_updates)
  ckpt = ckpt_lib.RunCheckpointer(model_dir, save_period=checkpoint_period,
                                  keep=keep_checkpoints, async_save=async_checkpointing)

  # State: resume > initial checkpoint > fresh.
  target = ts_lib.abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
  restored = ckpt.restore_latest(target, report=_status)
  if restored is not None:
    latest, state, data_state = restored
    position = int(data_state.get('position', latest))
    _status(f'resumed from step {latest} (data position {position}) in {ckpt.directory}')
  else:
    state = trainer.init_state()
    position = 0
    if initial_checkpoint_path:
      params = checkpoint_formats.load_initial_params(
          initial_checkpoint_path, state.params, trainer.state_shardings.params, assignment_map)
      state = state.replace(params=params)
      _status(f'initialised parameters from {initial_checkpoint_path}')
  start = int(jax.device_get(state.step))
  data_iter = make_iter(position)
  # Packed batches (segment ids) of a blocked model: no segment may cross a block.
  block = input_pipeline.encoder_block_length(model)

  logger = metrics_logging.MetricsLogger(model_dir, total_steps, start, progress_bar,
                                         resume_step=start)
  evaluator = predictor = None

  def run_eval(step: int) -> dict[str, float]:
    nonlocal evaluator, predictor
    scalars: dict[str, float] = {}
    if infer_eval_dataset_cfg is not None:
      if evaluator is None:
        evaluator = evaluation.make_evaluator(infer_eval_dataset_cfg, model=model)
        predictor = evaluation.Predictor(model, mesh, rules, trainer.state_shardings.params,
                                         infer_eval_dataset_cfg.batch_size)
      res = evaluation.run_inference_eval(evaluator, predictor, state.params, step,
                                          infer_eval_dataset_cfg.compute_scores)
      scalars.update(metrics_logging.flatten_eval_metrics(res, 'eval'))
    if validation_dataset_cfg is not None and eval_steps:
      vds = input_pipeline.get_dataset(validation_dataset_cfg, model, num_epochs=1)
      val = evaluation.validation_loss(trainer, state.params,
                                       vds.take(eval_steps).as_numpy_iterator())
      scalars.update({f'validation/{k}': v for k, v in val.items()})
    return scalars

  window: list[Mapping[str, Any]] = []
  guard = not skip_nonfinite_updates
  pending = None  # the previous step, checked after the next one is dispatched
  signals = preemption.PreemptionGuard()
  try:
    signals.__enter__()
    for step in range(start, total_steps):
      batch = next(data_iter)
      input_pipeline.check_encoder_blocks(batch, block)
      logger.count_tokens(count_tokens(batch) * jax.process_count())
      state, metrics = trainer.train_step(state, trainer.shard_batch(batch))
      if guard and pending is not None:
        check_finite(*pending)
      window.append(metrics)
      new_step = step + 1
      pending = (new_step, metrics)
      is_last = new_step == total_steps
      logger.step_done(new_step)
      on_log = new_step % max(log_period, 1) == 0 or is_last
      on_ckpt = checkpoint_period and (new_step % checkpoint_period == 0 or is_last)
      stop = not is_last and signals.reached(new_step)
      on_ckpt = on_ckpt or stop
      if guard and (on_log or on_ckpt or (eval_period and new_step % eval_period == 0)):
        check_finite(new_step, metrics)
      if on_log:
        scalars = _windowed(window)
        scalars['tokens_per_sec'] = logger.throughput()
        window = []
        if eval_period and (new_step % eval_period == 0 or is_last):
          scalars.update(run_eval(new_step))
        logger.write(new_step, scalars)
        logger.step_done(new_step, {k: scalars[k] for k in ('loss', 'accuracy')
                                    if k in scalars})
      elif eval_period and new_step % eval_period == 0:
        logger.write(new_step, run_eval(new_step))
      if on_ckpt:
        ckpt.save(new_step, state, data_iter.get_state(), force=True)
      if stop:
        ckpt.wait()
        _status(f'preempted: saved checkpoint {new_step} in {ckpt.directory}; exiting with '
                f'code {preemption.EXIT_PREEMPTED} (rerun the same command to resume)')
        raise preemption.Preempted(new_step)
  finally:
    signals.__exit__()
    ckpt.close()
    logger.close()
  return state, trainer


def _check_config(model: Any, cfg: input_pipeline.DatasetConfig, allow_truncation: bool,
                  num_examples: int) -> None:
  """The training data's configuration checks (see `config_checks`)."""
  config_checks.check_paired_batch(cfg.mixture_or_task_name, cfg.batch_size,
                                   jax.process_count(), bool(cfg.pack))
  input_pipeline.import_task_module(cfg.module)
  lengths = dict(cfg.task_feature_lengths or {})
  block = input_pipeline.encoder_block_length(model) if cfg.pack else 0
  if block and 'inputs' in lengths:  # packed inputs are trimmed to one block
    lengths['inputs'] = min(int(lengths['inputs']), block)
  config_checks.check_lengths(
      cfg.mixture_or_task_name, lengths, split=cfg.split,
      num_examples=num_examples, allow_truncation=allow_truncation,
      use_cached=cfg.use_cached, report=_status)


def _status(msg: str) -> None:
  """A line for the user (process 0), also in the absl log."""
  logging.info(msg)
  if jax.process_index() == 0:
    print(f'[distill_sbs.train] {msg}', file=sys.stderr, flush=True)


class _ListIterator:
  """Cycles through a list of batches; `position` = batches consumed."""

  def __init__(self, batches: list, position: int = 0):
    self._batches, self.position = batches, int(position)

  def __next__(self):
    b = self._batches[self.position % len(self._batches)]
    self.position += 1
    return b

  def get_state(self) -> dict[str, int]:
    return {'position': self.position}
