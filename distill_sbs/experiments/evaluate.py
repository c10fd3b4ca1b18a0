"""Test-set evaluation of one trained student (sweeps, demo): a thin gin entry
over `training.evaluation.student_eval` (test accuracy, rank accuracy, ECE, MCE,
Brier; one prediction with its confidence per example).

`python -m distill_sbs.experiments.evaluate --gin_file=RUN.gin ...
--gin.MODEL_DIR=... --gin.distill_sbs.experiments.evaluate.run_student_eval.eval_task=...
--gin.distill_sbs.experiments.evaluate.run_student_eval.dataset=...`
writes `MODEL_DIR/eval_results.json` and `MODEL_DIR/test_predictions.jsonl`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import gin
import numpy as np

from distill_sbs.distill import io_utils
from distill_sbs.experiments import runs as runs_lib

PREDICTIONS_FILE = 'test_predictions.jsonl'


@gin.configurable(module='distill_sbs.experiments.evaluate')
def run_student_eval(*, model: Any, model_dir: str, eval_task: str, dataset: str,
                     split: str = 'test', num_examples: Optional[int] = None,
                     task_feature_lengths: Optional[Mapping[str, int]] = None,
                     input_length: Optional[int] = None,
                     max_decode_length: Optional[int] = None,
                     batch_size: int = 32, num_bins: int = 10, mesh_config: Any = None,
                     log: Callable[[str], None] = print) -> dict[str, float]:
  """Evaluates the latest checkpoint in `model_dir` on `eval_task`/`split`.

  Lengths ('inputs' / 'targets', the latter also the decode length) default to
  the run's TASK_FEATURE_LENGTHS, else 512 / 64. Writes `model_dir/eval_results.json`
  (metrics) and `test_predictions.jsonl`; returns the metrics.
  """
  from distill_sbs.training import evaluation  # pylint: disable=g-import-not-at-top
  t0 = time.monotonic()
  lengths = dict(task_feature_lengths or {})
  lengths = {'inputs': int(input_length or lengths.get('inputs') or 512),
             'targets': int(max_decode_length or lengths.get('targets') or 64)}
  predictor, params = evaluation.load_predictor(model, model_dir, batch_size, mesh_config)
  evaluator = evaluation.make_evaluator(evaluation.EvalConfig(
      eval_task, lengths, split=split, batch_size=batch_size, num_examples=num_examples),
      model=model)
  log(f'  evaluating {model_dir} on {eval_task}/{split}')
  res = evaluation.student_eval(evaluator, predictor.predict_with_aux_fn(params),
                                predictor.score_fn(params), dataset, num_bins=num_bins,
                                log=log)
  metrics = dict(res.metrics, eval_seconds=time.monotonic() - t0)
  write_results(model_dir, metrics, res.predictions)
  log('  ' + ', '.join(f'{k}={v:.4g}' for k, v in metrics.items()))
  return metrics


def write_results(model_dir: str, metrics: Mapping[str, float],
                  predictions: Sequence[Mapping[str, Any]]) -> None:
  """`eval_results.json` (metrics) and `test_predictions.jsonl` in `model_dir`."""
  io_utils.write_json_atomic(os.path.join(model_dir, runs_lib.EVAL_FILE), dict(metrics),
                             sort_keys=True)
  with open(os.path.join(model_dir, PREDICTIONS_FILE), 'w', encoding='utf-8') as f:
    for p in predictions:
      f.write(json.dumps(p, ensure_ascii=False) + '\n')


def read_predictions(model_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """(confidences [n], correct [n]) from `test_predictions.jsonl`."""
  rows = [p for _, p in io_utils.read_jsonl(os.path.join(model_dir, PREDICTIONS_FILE))]
  return (np.array([float(p['confidence']) for p in rows]),
          np.array([bool(p['correct']) for p in rows], bool))


def main(argv: Sequence[str]) -> None:
  """The run's gin files give MODEL; `model`/`model_dir` come from the flags
  (the sweep binds them to %MODEL / %MODEL_DIR)."""
  from distill_sbs.training import gin_utils  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {argv[1:]}')
  gin_utils.parse_gin_flags()
  gin.get_configurable(run_student_eval)()


if __name__ == '__main__':
  from distill_sbs.training import gin_utils as _gu  # pylint: disable=g-import-not-at-top
  _gu.run(main)
