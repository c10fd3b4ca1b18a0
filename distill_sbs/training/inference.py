"""Evaluation-only and inference runs (`distill_sbs.eval`, `distill_sbs.infer`),
both over `training.evaluation` (checkpoint loading, `Predictor`, seqio tasks)."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import gin
import jax

from distill_sbs.training import evaluation
from distill_sbs.training import metrics_logging
from distill_sbs.training import partitioning


@gin.configurable(module='distill_sbs.training.inference')
def evaluate(*, model: Any, infer_eval_dataset_cfg: evaluation.EvalConfig,
             checkpoint_path: str, output_dir: str,
             mesh_config: Optional[partitioning.MeshConfig] = None) -> dict[str, float]:
  """The tasks' metrics of a checkpoint (e.g. `eval_{ds}`: test accuracy, and rank
  accuracy and calibration from its `rank_{ds}` task); appended to
  OUTPUT_DIR/metrics.jsonl."""
  cfg = infer_eval_dataset_cfg
  predictor, params = evaluation.load_predictor(model, checkpoint_path, cfg.batch_size,
                                                mesh_config)
  step = evaluation.checkpoint_step(checkpoint_path)
  res = evaluation.run_inference_eval(evaluation.make_evaluator(cfg, model=model), predictor, params,
                                      step, cfg.compute_scores)
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
  predictor, params = evaluation.load_predictor(model, checkpoint_path,
                                                dataset_cfg.batch_size, mesh_config)
  evaluator = evaluation.make_evaluator(dataset_cfg, model=model)
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
          rec = {'index': i, 'inputs': evaluation.text(ex.get('inputs_pretokenized')),
                 'targets': evaluation.text(ex.get('targets_pretokenized')),
                 'prediction': vocab.decode([int(t) for t in outputs[i]])}
          f.write(json.dumps(rec, ensure_ascii=False) + '\n')
    paths.append(path)
  return paths
