"""Evaluation: `seqio.Evaluator` with the project's decoding, and validation loss.

Every process sees the whole evaluation set; each feeds its rows of a padded
global batch and the predictions are gathered back on every process.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.experimental import multihost_utils

from distill_sbs.training import input_pipeline
from distill_sbs.training import partitioning


@gin.configurable(module='distill_sbs.training.evaluation')
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Inference evaluation (T5X's `infer_eval_dataset_cfg` plus options)."""
  mixture_or_task_name: str
  task_feature_lengths: Optional[Mapping[str, int]] = None
  split: str = 'validation'
  batch_size: int = 32
  num_examples: Optional[int] = None
  use_cached: bool = False
  seed: int = 42
  module: Optional[str] = 'distill_sbs.tasks'
  feature_converter_cls: Any = seqio.EncDecFeatureConverter
  compute_scores: bool = True


def _to_global(rows: Mapping[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Full (replicated-on-host) rows → global arrays; each process feeds its slice."""
  n, i = jax.process_count(), jax.process_index()
  local = {}
  for k, v in rows.items():
    per = v.shape[0] // n
    local[k] = v[i * per:(i + 1) * per]
  return partitioning.make_global_batch(local, mesh)


def _gather(x: jax.Array) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _padded_batches(ds: tf.data.Dataset, batch_size: int
                    ) -> Sequence[tuple[np.ndarray, dict[str, np.ndarray], int]]:
  """(indices, features padded to batch_size rows, number of real rows)."""
  out = []
  for idx, feats in ds.batch(batch_size).as_numpy_iterator():
    n = len(idx)
    if n < batch_size:
      feats = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, 0)])
               for k, v in feats.items()}
    out.append((idx, feats, n))
  return out


class Predictor:
  """Jitted, sharded `predict_batch` / `score_batch` over seqio eval datasets."""

  def __init__(self, model, mesh, rules, param_shardings, batch_size: int):
    self.model, self.mesh, self.rules = model, mesh, list(rules)
    data_size = mesh.shape[partitioning.DATA_AXIS]
    if batch_size % data_size:
      batch_size += data_size - batch_size % data_size
    self.batch_size = batch_size
    dsh = partitioning.data_sharding(mesh)
    self._predict = jax.jit(model.predict_batch, in_shardings=(param_shardings, dsh, None),
                            out_shardings=dsh)
    self._score = jax.jit(model.score_batch, in_shardings=(param_shardings, dsh),
                          out_shardings=dsh)

  def _run(self, fn: Callable, ds: tf.data.Dataset, keys: Sequence[str]) -> list:
    from flax import linen as nn  # pylint: disable=g-import-not-at-top
    results = []
    for idx, feats, n in _padded_batches(ds, self.batch_size):
      batch = _to_global({k: feats[k] for k in keys if k in feats}, self.mesh)
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
        out = _gather(fn(batch))
      results.extend(zip(idx[:n].tolist(), out[:n].tolist()))
    return results

  def predict_fn(self, params: Any, rng: Optional[jax.Array] = None):
    keys = ('encoder_input_tokens', 'decoder_target_tokens', 'decoder_input_tokens')
    return lambda ds: self._run(lambda b: self._predict(params, b, rng), ds, keys)

  def score_fn(self, params: Any):
    keys = ('encoder_input_tokens', 'decoder_target_tokens', 'decoder_input_tokens',
            'decoder_loss_weights')
    return lambda ds: self._run(lambda b: self._score(params, b), ds, keys)


def make_evaluator(cfg: EvalConfig, log_dir: Optional[str] = None) -> seqio.Evaluator:
  input_pipeline.import_task_module(cfg.module)
  return seqio.Evaluator(
      mixture_or_task_name=cfg.mixture_or_task_name,
      feature_converter=cfg.feature_converter_cls(pack=False),
      eval_split=cfg.split, use_cached=cfg.use_cached, seed=cfg.seed,
      sequence_length=dict(cfg.task_feature_lengths) if cfg.task_feature_lengths else None,
      num_examples=cfg.num_examples, shuffle=False, log_dir=log_dir,
      logger_cls=(), async_compute_metrics=False)


def run_inference_eval(evaluator: seqio.Evaluator, predictor: Predictor, params: Any,
                       step: int, compute_scores: bool = True) -> dict[str, Any]:
  """{task: {metric: value}} from the tasks' metric functions."""
  has_score = compute_scores and any(t.score_metric_fns for t in evaluator.eval_tasks)
  metrics, _ = evaluator.evaluate(
      compute_metrics=jax.process_index() == 0, step=step,
      predict_fn=predictor.predict_fn(params),
      score_fn=predictor.score_fn(params) if has_score else None)
  if hasattr(metrics, 'result'):
    metrics = metrics.result()
  return metrics or {}


def validation_loss(trainer, params: Any, batches) -> dict[str, float]:
  """Teacher-forced loss / token accuracy over an iterable of local batches."""
  total_loss = total_w = correct = real = 0.0
  n = 0
  for local in batches:
    mets = jax.device_get(trainer.eval_step(params, trainer.shard_batch(local)))
    w = float(mets.get('weight_sum', 1.0))
    total_loss += float(mets['loss']) * w
    total_w += w
    correct += float(mets['correct_tokens'])
    real += float(mets['real_tokens'])
    n += 1
  if not n:
    return {}
  return {'loss': total_loss / max(total_w, 1e-9), 'accuracy': correct / max(real, 1.0)}
