"""A tiny model overfits 32 real CQA examples to 100% exact match through
`train` and `eval` (seqio.Evaluator with the task's metric)."""
import json

import numpy as np

import train_helpers as helpers
import tiny_tasks
from distill_sbs.experiments import evaluate as evaluate_lib
from distill_sbs.training import evaluation
from distill_sbs.training import inference
from distill_sbs.training import input_pipeline
from distill_sbs.training import optimizers
from distill_sbs.training import partitioning
from distill_sbs.training import train_loop

LENGTHS = {'inputs': 192, 'targets': 24}
STEPS = 200


def test_tiny_model_overfits_32_cqa_examples(tmp_path):
  task = tiny_tasks.register()
  model = helpers.tiny_model(optimizers.adafactor(optimizers.constant(0.01)),
                             num_encoder_layers=1, num_decoder_layers=1)
  train_cfg = input_pipeline.DatasetConfig(task, LENGTHS, batch_size=32, module='tiny_tasks')
  val_cfg = input_pipeline.DatasetConfig(task, LENGTHS, split='validation', batch_size=32,
                                         shuffle=False, module='tiny_tasks')
  mesh = partitioning.MeshConfig(mesh_shape=(4, 2))
  state, _ = train_loop.train(
      model=model, train_dataset_cfg=train_cfg, model_dir=str(tmp_path / 'run'),
      total_steps=STEPS, validation_dataset_cfg=val_cfg, eval_period=STEPS, eval_steps=1,
      log_period=50, checkpoint_period=STEPS, mesh_config=mesh, progress_bar=False)
  assert int(state.step) == STEPS
  records = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [50, 100, 150, 200]
  assert records[-1]['loss'] < 0.3 * records[0]['loss']
  assert all(r['learning_rate'] == np.float32(0.01) and r['tokens_per_sec'] > 0
             for r in records)
  assert records[-1]['validation/accuracy'] > 0.95  # teacher-forced token accuracy

  eval_cfg = evaluation.EvalConfig(task, LENGTHS, batch_size=32, module='tiny_tasks',
                                   compute_scores=False)
  scalars = inference.evaluate(model=model, infer_eval_dataset_cfg=eval_cfg,
                               checkpoint_path=str(tmp_path / 'run'),
                               output_dir=str(tmp_path / 'eval'), mesh_config=mesh)
  assert scalars == {f'eval/{task}/exact_match': 100.0}
  logged = json.loads((tmp_path / 'eval' / 'metrics.jsonl').read_text())
  assert logged['eval/test_cqa_32/exact_match'] == 100.0

  # `infer` writes one JSON line per example; the overfitted model reproduces
  # every gold answer.
  paths = inference.infer(model=model, dataset_cfg=eval_cfg,
                          checkpoint_path=str(tmp_path / 'run' / 'checkpoints' / str(STEPS)),
                          output_dir=str(tmp_path / 'infer'), mesh_config=mesh)
  lines = [json.loads(l) for l in open(paths[0], encoding='utf-8')]
  assert [l['index'] for l in lines] == list(range(32))
  gold = [r[1] for r in tiny_tasks._rows(32)]
  assert [l['targets'] for l in lines] == gold
  assert [l['prediction'] for l in lines] == gold
  assert lines[0]['inputs'].startswith(tiny_tasks._rows(1)[0][0][:20])

  # The sweeps' test evaluation of the same run: generation and rank accuracy,
  # calibration, one prediction with its confidence per example.
  m = evaluate_lib.run_student_eval(
      model=model, model_dir=str(tmp_path / 'run'), eval_task=task, dataset='cqa',
      split='validation', task_feature_lengths=LENGTHS, mesh_config=mesh, log=lambda s: None)
  assert m['accuracy'] == 100.0 and m['rank_accuracy'] == 100.0
  assert 0 <= m['ece'] <= 1 and m['num_examples'] == 32
  conf, correct = evaluate_lib.read_predictions(str(tmp_path / 'run'))
  assert len(conf) == 32 and correct.all() and (conf > 0.2).all()
