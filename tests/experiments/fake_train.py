"""A stand-in trainer/evaluator for sweep tests: deterministic metrics files.

As the evaluator (when `run_student_eval.eval_task` is bound) it writes
`eval_results.json` with test accuracy 40 + seed and ece 0.1 + 0.02 * seed, and
`test_predictions.jsonl` with 10 examples: confidence (i + 0.5) / 10, correct
for i < 5 + seed.

Understands the flags the sweep passes (`--gin_file=`, `--gin.KEY=VALUE`), reading
the macros of the composed gin files as the trainer would (`gin_macros`); appends one line per invocation to `$FAKE_TRAIN_CALLS` so tests can count runs.
"""
import json
import os
import pathlib
import sys

from distill_sbs.training import gin_macros


def main(argv):
  gin = {}
  files = [a.split('=', 1)[1] for a in argv if a.startswith('--gin_file=')]
  bindings = [a[len('--gin.'):] for a in argv if a.startswith('--gin.')]
  gin.update(gin_macros.read_macros(files, bindings))
  for a in bindings:
    k, v = a.split('=', 1)
    gin[k] = json.loads(v) if v[:1] in '"[' or v[:1].isdigit() else v
  model_dir = pathlib.Path(gin['MODEL_DIR'])
  model_dir.mkdir(parents=True, exist_ok=True)
  evals = {k.rsplit('.', 1)[1]: v for k, v in gin.items() if 'run_student_eval' in k}
  if evals:
    assert evals['model'] == '%MODEL' and evals['model_dir'] == '%MODEL_DIR', evals
    assert (model_dir / 'metrics.jsonl').exists()
    (model_dir / 'eval_results.json').write_text(json.dumps(
        {'accuracy': 40.0 + gin['RANDOM_SEED'], 'ece': 0.1 + 0.02 * gin['RANDOM_SEED'],
         'task_is_' + evals['eval_task']: 1.0}))
    with open(model_dir / 'test_predictions.jsonl', 'w') as f:
      for i in range(10):
        f.write(json.dumps({'id': str(i), 'confidence': (i + 0.5) / 10,
                            'correct': i < 5 + gin['RANDOM_SEED']}) + '\n')
    return 0
  if os.environ.get('FAKE_TRAIN_CALLS'):
    with open(os.environ['FAKE_TRAIN_CALLS'], 'a') as f:
      f.write(gin['MIXTURE_OR_TASK_NAME'] + ' ' + str(gin['RANDOM_SEED']) + '\n')
  if os.environ.get('FAKE_TRAIN_FAIL') and os.environ['FAKE_TRAIN_FAIL'] in gin['MIXTURE_OR_TASK_NAME']:
    print('boom', file=sys.stderr)
    return 3
  steps, seed = int(gin['TRAIN_STEPS']), int(gin['RANDOM_SEED'])
  task = gin['MIXTURE_OR_TASK_NAME']
  # accuracy = 0.5 + 0.1*seed (+0.05 for step-by-step tasks), loss = 1/step.
  bonus = 0.05 if task.startswith('sbs_') and '_label_' not in task else 0.0
  with open(model_dir / 'metrics.jsonl', 'w') as f:
    for step in range(1, steps + 1):
      rec = {'step': step, 'loss': 1.0 / step, 'learning_rate': 0.01}
      if step == steps:
        rec['eval/accuracy'] = 0.5 + 0.1 * seed + bonus
      f.write(json.dumps(rec) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
