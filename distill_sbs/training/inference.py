"""Evaluation-only and inference runs (`distill_sbs.eval`, `distill_sbs.infer`)."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import gin
import jax
import numpy as np

from distill_sbs.training import checkpoints as ckpt_lib
from distill_sbs.training import evaluation
from distill_sbs.training import metrics_logging
from distill_sbs.training import partitioning
from distill_sbs.training import train_state as ts_lib

_INIT_SHAPES = {'encoder_input_tokens': (1, 8), 'decoder_input_tokens': (1, 8),
                'decoder_target_tokens': (1, 8)}


def _setup(model, checkpoint_path: str, mesh_config: Optional[partitioning.MeshConfig]):
  mesh_config = mesh_config or partitioning.MeshConfig()
  mesh = partitioning.create_mesh(mesh_config)
  rules = mesh_config.logical_axis_rules()
  abstract, shardings = ts_lib.state_shardings(model, _INIT_SHAPES, mesh, rules)
  params = ckpt_lib.load_params(checkpoint_path, abstract.params, shardings.params)
  return mesh, rules, params, shardings.params


def _step_of(checkpoint_path: str) -> int:
  """The step of the checkpoint read from `checkpoint_path` (a run / T5X model
  dir: its latest step), parsed from a step directory name (`<N>` or
  `checkpoint_<N>`); -1 if unknown (e.g. a Hugging Face directory)."""
  step_dir = ckpt_lib.find_step_dir(checkpoint_path)
  if step_dir is None:
    return -1
  step = ckpt_lib.step_from_dir_name(os.path.basename(os.path.normpath(step_dir)))
  return -1 if step is None else step


@gin.configurable(module='distill_sbs.training.inference')
def evaluate(*, model: Any, infer_eval_dataset_cfg: evaluation.EvalConfig,
             checkpoint_path: str, output_dir: str,
             mesh_config: Optional[partitioning.MeshConfig] = None) -> dict[str, float]:
  """Inference metrics of a checkpoint; appended to OUTPUT_DIR/metrics.jsonl."""
  mesh, rules, params, psh = _setup(model, checkpoint_path, mesh_config)
  evaluator = evaluation.make_evaluator(infer_eval_dataset_cfg)
  predictor = evaluation.Predictor(model, mesh, rules, psh, infer_eval_dataset_cfg.batch_size)
  step = _step_of(checkpoint_path)
  res = evaluation.run_inference_eval(evaluator, predictor, params, step,
                                      infer_eval_dataset_cfg.compute_scores)
  scalars = metrics_logging.flatten_eval_metrics(res, 'eval')
  logger = metrics_logging.MetricsLogger(output_dir, 0, progress_bar=False,
                                         tensorboard=False)
  logger.write(step, scalars)
  logger.close()
  return scalars


@gin.configurable(module='distill_sbs.training.inference')
def infer(*, model: Any, dataset_cfg: evaluation.EvalConfig, checkpoint_path: str,
          output_dir: str, mesh_config: Optional[partitioning.MeshConfig] = None
          ) -> list[str]:
  """Writes OUTPUT_DIR/{task}-{split}.jsonl: one JSON object per example with
  index, inputs, targets and prediction (decoded text)."""
  mesh, rules, params, psh = _setup(model, checkpoint_path, mesh_config)
  evaluator = evaluation.make_evaluator(dataset_cfg)
  predictor = evaluation.Predictor(model, mesh, rules, psh, dataset_cfg.batch_size)
  predict = predictor.predict_fn(params)
  paths = []
  os.makedirs(output_dir, exist_ok=True)
  for task in evaluator.eval_tasks:
    examples = list(evaluator.cached_task_datasets[task.name].as_numpy_iterator())
    outputs = dict(predict(evaluator.cached_model_datasets[task.name]))
    vocab = task.output_features['targets'].vocabulary
    path = os.path.join(output_dir, f'{task.name}-{dataset_cfg.split}.jsonl')
    if jax.process_index() == 0:
      with open(path, 'w', encoding='utf-8') as f:
        for i, ex in enumerate(examples):
          rec = {'index': i, 'inputs': _text(ex.get('inputs_pretokenized')),
                 'targets': _text(ex.get('targets_pretokenized')),
                 'prediction': vocab.decode([int(t) for t in outputs[i]])}
          f.write(json.dumps(rec, ensure_ascii=False) + '\n')
    paths.append(path)
  return paths


def _text(v: Any) -> Optional[str]:
  if v is None:
    return None
  if isinstance(v, np.ndarray):
    v = v.item() if v.ndim == 0 else v.tolist()
  return v.decode('utf-8') if isinstance(v, bytes) else v
