"""Test-set evaluation of one student: generation accuracy, rank accuracy, ECE.

For every test record:
  - greedy decoding of the label task → generation accuracy (the paper's
    metric: normalised exact match; SVAMP: equal equation values);
  - rank classification over the candidate labels (CQA: the example's five
    choices; NLI: the three classes) → rank accuracy and calibration (ECE, MCE,
    Brier) with confidence = softmax over candidate sequence log-probs;
  - SVAMP has no candidate set: its confidence is the probability of the greedy
    output, `exp(sum of token log-probs)`, against generation correctness.
Results are percentages for accuracies and [0, 1] for ECE/MCE/Brier.
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import gin
import numpy as np

from distill_sbs.data import formats
from distill_sbs.metrics import accuracy as accuracy_lib
from distill_sbs.metrics import calibration
from distill_sbs.metrics import rank_classification
from distill_sbs.metrics import svamp as svamp_metrics

_CHOICE_RE = re.compile(r'^\(([a-e])\) (.*)$')


def candidates(ds: str, inputs: str) -> Optional[list[str]]:
  """Candidate labels of one example (None when the label is open text)."""
  if formats.LABELS.get(ds):
    return list(formats.LABELS[ds])
  if ds == 'cqa':
    tail = inputs.rsplit('Answer Choices:', 1)
    if len(tail) != 2:
      raise ValueError(f'cqa input has no "Answer Choices:" block: {inputs[:80]!r}')
    out = [m.group(2).strip() for line in tail[1].strip().splitlines()
           if (m := _CHOICE_RE.match(line.strip()))]
    if not out:
      raise ValueError(f'cqa input lists no choices: {inputs[:80]!r}')
    return out
  return None


def is_correct(ds: str, gold: str, prediction: str) -> bool:
  if ds == 'svamp':
    return svamp_metrics.equations_equal(gold, prediction)
  return accuracy_lib.normalize_answer(gold) == accuracy_lib.normalize_answer(prediction)


def _tokenize(vocab: Any, texts: Sequence[str], length: int) -> np.ndarray:
  """[n, length] int32: tokens truncated to length-1, then EOS, zero padded."""
  out = np.zeros((len(texts), length), np.int32)
  for i, t in enumerate(texts):
    ids = list(vocab.encode(t))[:length - 1] + [vocab.eos_id]
    out[i, :len(ids)] = ids
  return out


def _decode(vocab: Any, tokens: np.ndarray) -> str:
  ids = [int(t) for t in tokens]
  if vocab.eos_id in ids:
    ids = ids[:ids.index(vocab.eos_id)]
  return vocab.decode([t for t in ids if t > 0])


class GenerateFn(Protocol):
  """Greedy decoder: encoder_input_tokens [b, l] -> (tokens [b, t], log-probs [b])."""

  def __call__(self, encoder_input_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ...


@dataclasses.dataclass(frozen=True)
class StudentEval:
  metrics: dict[str, float]
  predictions: list[dict[str, Any]]  # id, gold, prediction, confidence, correct

  @property
  def confidences(self) -> np.ndarray:
    return np.array([p['confidence'] for p in self.predictions], np.float64)

  @property
  def correct(self) -> np.ndarray:
    return np.array([p['correct'] for p in self.predictions], bool)


def evaluate_records(records: Sequence[dict[str, Any]], ds: str, vocab: Any,
                     generate_fn: GenerateFn,
                     score_fn: rank_classification.ScoreFn, *,
                     input_prefix: str = '', input_length: int = 256,
                     batch_size: int = 32, num_bins: int = 10,
                     postprocess: Optional[Callable[[str], str]] = None,
                     log: Callable[[str], None] = lambda s: None) -> StudentEval:
  """Evaluates one student on `records` (schema dicts with inputs, label).

  Args:
    generate_fn: greedy decoder, inputs [b, input_length] -> (tokens, log-probs).
    score_fn: teacher-forced per-token log-probs (`rank_classification.ScoreFn`).
    input_prefix: the task prefix the student was trained with ('predict: ').
    postprocess: maps a decoded output to the label (chain-of-thought students:
      the label after the separator); then no candidate ranking is done and the
      confidence is the probability of the whole greedy output.
  """
  if not records:
    raise ValueError('no records to evaluate')
  inputs = _tokenize(vocab, [input_prefix + r['inputs'] for r in records], input_length)
  golds = [r['label'] for r in records]
  preds, seq_logp = [], []
  t0 = time.monotonic()
  for start in range(0, len(records), batch_size):
    batch = inputs[start:start + batch_size]
    n = batch.shape[0]
    if n < batch_size:  # fixed shapes: one compilation
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, 0)])
    toks, logp = generate_fn(batch)
    toks, logp = np.asarray(toks)[:n], np.asarray(logp)[:n]
    texts = [_decode(vocab, t) for t in toks]
    preds += [postprocess(t) for t in texts] if postprocess else texts
    seq_logp += [float(x) for x in logp]
    log(f'    decoded {min(start + batch_size, len(records))}/{len(records)} '
        f'({time.monotonic() - t0:.0f}s)')
  gen_correct = np.array([is_correct(ds, g, p) for g, p in zip(golds, preds)])
  metrics = {'accuracy': 100.0 * float(gen_correct.mean()),
             'num_examples': float(len(records))}
  cands = [None if postprocess else candidates(ds, r['inputs']) for r in records]
  if cands and all(c is not None for c in cands):
    gold_idx = []
    for r, c in zip(records, cands):
      norm = [accuracy_lib.normalize_answer(x) for x in c]
      g = accuracy_lib.normalize_answer(r['label'])
      if g not in norm:
        raise ValueError(f'record {r.get("id")!r}: gold label {r["label"]!r} is not '
                         f'among its candidates {c}')
      gold_idx.append(norm.index(g))
    width = max(len(c) for c in cands)
    cand_len = max(len(vocab.encode(x)) + 1 for c in cands for x in c)
    cand_tok = np.zeros((len(records), width, cand_len), np.int32)
    for i, c in enumerate(cands):
      padded = c + [c[-1]] * (width - len(c))  # repeats never win a tie-break
      cand_tok[i] = _tokenize(vocab, padded, cand_len)
    res = rank_classification.rank_classify(score_fn, inputs, cand_tok, gold_idx,
                                            batch_size=batch_size * 4)
    conf, correct = res.confidences, res.correct
    chosen = [c[int(k)] for c, k in zip(cands, res.predictions)]
    metrics['rank_accuracy'] = 100.0 * float(correct.mean())
    metrics['brier'] = calibration.brier(res.probabilities, np.asarray(gold_idx))
    metrics['confidence_source'] = 0.0  # 0: rank classification
  else:
    conf = np.exp(np.minimum(np.array(seq_logp), 0.0))
    correct = gen_correct
    chosen = preds
    metrics['confidence_source'] = 1.0  # 1: greedy sequence probability
  metrics['ece'] = calibration.ece(conf, correct, num_bins=num_bins)
  metrics['mce'] = calibration.mce(conf, correct, num_bins=num_bins)
  metrics['mean_confidence'] = float(np.mean(conf))
  predictions = [{'id': r.get('id', str(i)), 'gold': g, 'generated': p,
                  'generated_correct': bool(gc), 'ranked': ch,
                  'confidence': float(c), 'correct': bool(k)}
                 for i, (r, g, p, gc, ch, c, k) in enumerate(
                     zip(records, golds, preds, gen_correct, chosen, conf, correct))]
  return StudentEval(metrics, predictions)


def model_fns(config: Any, params: Any, max_decode_length: int
              ) -> tuple[GenerateFn, rank_classification.ScoreFn]:
  """(generate_fn, score_fn) over `distill_sbs.models` for a T5Config + params."""
  from distill_sbs import models  # pylint: disable=g-import-not-at-top

  def generate_fn(enc):
    return models.generate(config, params, enc, max_decode_length=max_decode_length)

  return generate_fn, rank_classification.model_score_fn(config, params, models.score)


# ------------------------------------------------------------- gin entry point

def task_records(task_name: str, split: str, num_examples: Optional[int] = None
                 ) -> tuple[list[dict[str, Any]], Optional[Callable[[str], str]]]:
  """[{id, inputs, label}] of a seqio task's split (texts before tokenisation,
  inputs with the task's prefix) and the task's postprocessor (or None)."""
  import seqio  # pylint: disable=g-import-not-at-top
  import distill_sbs.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False)
  if num_examples:
    ds = ds.take(int(num_examples))
  out = []
  for i, ex in enumerate(ds.as_numpy_iterator()):
    text = lambda k: ex[k].decode('utf-8') if isinstance(ex[k], bytes) else str(ex[k])
    out.append({'id': str(i), 'inputs': text('inputs_pretokenized'),
                'label': text('targets_pretokenized')})
  post = None
  fn = getattr(task, '_postprocess_fn', None)  # seqio keeps the user's fn here
  if fn is not None:
    post = lambda s: fn(s, example=None, is_target=False)
  return out, post



PREDICTIONS_FILE = 'test_predictions.jsonl'


@gin.configurable(module='distill_sbs.experiments.evaluate')
def run_student_eval(*, model: Any, model_dir: str, eval_task: str, dataset: str,
                     split: str = 'test', num_examples: Optional[int] = None,
                     task_feature_lengths: Optional[Mapping[str, int]] = None,
                     input_length: Optional[int] = None,
                     max_decode_length: Optional[int] = None,
                     batch_size: int = 32, num_bins: int = 10,
                     log: Callable[[str], None] = print) -> dict[str, float]:
  """Evaluates the latest checkpoint in `model_dir` on `eval_task`/`split`.

  Lengths default to the run's TASK_FEATURE_LENGTHS ('inputs' / 'targets'),
  else 512 / 64.

  Writes `model_dir/eval_results.json` (metrics) and `test_predictions.jsonl`
  (one prediction per example with its confidence); returns the metrics.
  """
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from distill_sbs.experiments import runs as runs_lib  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import checkpoints  # pylint: disable=g-import-not-at-top
  t0 = time.monotonic()
  lengths = dict(task_feature_lengths or {})
  input_length = int(input_length or lengths.get('inputs') or 512)
  max_decode_length = int(max_decode_length or lengths.get('targets') or 64)
  params = checkpoints.read_params(model_dir)
  records, post = task_records(eval_task, split, num_examples)
  if post is not None:
    records = [dict(r, label=post(r['label'])) for r in records]
  log(f'  evaluating {model_dir} on {eval_task}/{split} ({len(records)} examples)')
  gen, score = model_fns(model.config, params, max_decode_length)
  res = evaluate_records(records, dataset, model.output_vocabulary, gen, score,
                         input_length=input_length, batch_size=batch_size,
                         num_bins=num_bins, postprocess=post, log=log)
  metrics = dict(res.metrics, eval_seconds=time.monotonic() - t0)
  runs_lib.write_json_atomic(os.path.join(model_dir, runs_lib.EVAL_FILE), metrics)
  with open(os.path.join(model_dir, PREDICTIONS_FILE), 'w') as f:
    for p in res.predictions:
      f.write(json.dumps(p) + '\n')
  log('  ' + ', '.join(f'{k}={v:.4g}' for k, v in metrics.items()))
  return metrics


def read_predictions(model_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """(confidences [n], correct [n]) from `test_predictions.jsonl`."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  conf, corr = [], []
  with open(os.path.join(model_dir, PREDICTIONS_FILE)) as f:
    for line in f:
      if line.strip():
        p = json.loads(line)
        conf.append(float(p['confidence']))
        corr.append(bool(p['correct']))
  return np.array(conf), np.array(corr)


def main(argv: Sequence[str]) -> None:
  """`python -m distill_sbs.experiments.evaluate --gin_file=RUN.gin ...
  --gin.MODEL_DIR=... --gin.run_student_eval.eval_task=... --gin.run_student_eval.dataset=...`
  (the run's gin files give MODEL; `model`/`model_dir` default to %MODEL/%MODEL_DIR)."""
  from distill_sbs.training import gin_utils  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {argv[1:]}')
  gin_utils.parse_gin_flags()
  gin.get_configurable(run_student_eval)()


if __name__ == '__main__':
  from distill_sbs.training import gin_utils as _gu  # pylint: disable=g-import-not-at-top
  _gu.run(main)
