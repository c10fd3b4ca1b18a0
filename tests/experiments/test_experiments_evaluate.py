"""Student test evaluation (`training.evaluation.student_eval`) over seqio tasks:
generation accuracy, rank classification and ECE by hand with fake model fns."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from distill_sbs.experiments import evaluate as evaluate_lib
from distill_sbs.metrics import accuracy
from distill_sbs.metrics import calibration
from distill_sbs.metrics import choices
from distill_sbs.training import evaluation

VOCAB = seqio.ByteVocabulary(extra_ids=0)
CQA_INPUT = 'Q?\nAnswer Choices:\n(a) red\n(b) blue\n(c) green\n(d) tea cup\n(e) sky'
LENGTHS = {'inputs': 64, 'targets': 12}


def test_candidates():
  assert choices.candidates('cqa', CQA_INPUT) == ['red', 'blue', 'green', 'tea cup', 'sky']
  assert choices.candidates('cqa', 'predict: ' + CQA_INPUT)[-1] == 'sky'
  assert choices.candidates('esnli', 'x', ('entailment', 'neutral')) == ['entailment',
                                                                         'neutral']
  assert choices.candidates('svamp', 'x') is None
  with pytest.raises(ValueError, match='Answer Choices'):
    choices.candidates('cqa', 'no choices here')


def _evaluator(name, inputs, targets, postprocess_fn=None):
  def dataset_fn(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({'inputs': inputs, 'targets': targets})
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=('test',)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={k: seqio.Feature(VOCAB, add_eos=True) for k in ('inputs', 'targets')},
      postprocess_fn=postprocess_fn, metric_fns=[accuracy.exact_match])
  return evaluation.make_evaluator(evaluation.EvalConfig(name, LENGTHS, split='test',
                                                         module=None))


def _fake_fns(answers, favourite):
  """predict returns `answers[i]` with log-prob -0.5; score gives -1 per token to
  the candidate starting with favourite[i]'s first byte and -3 per token otherwise
  (example i's input starts with the digit i)."""

  def predict_with_aux_fn(ds):
    return [(int(i), (VOCAB.encode(answers[int(i)]) + [1], -0.5))
            for i, _ in ds.as_numpy_iterator()]

  def score_fn(ds):
    out = []
    for i, f in ds.as_numpy_iterator():
      row = VOCAB.decode([int(f['encoder_input_tokens'][0])])
      fav = VOCAB.encode(favourite[int(row)])[0]
      tgt = f['decoder_target_tokens']
      per_tok = -1.0 if tgt[0] == fav else -3.0
      out.append((int(i), per_tok * float(np.sum(tgt > 0))))
    return out

  return predict_with_aux_fn, score_fn


def test_cqa_hand_values():
  ev = _evaluator('test_eval_cqa', [f'{i}' + CQA_INPUT for i in range(4)],
                  ['red', 'blue', 'sky', 'green'])
  res = evaluation.student_eval(ev, *_fake_fns(['red', 'Blue.', 'green', 'green'],
                                              ['red', 'blue', 'green', 'green']), 'cqa')
  m = res.metrics
  assert m['accuracy'] == 75.0  # 'Blue.' normalises to 'blue'; 'green' != 'sky'
  assert m['rank_accuracy'] == 75.0 and m['confidence_source'] == 0.0

  def conf(fav):  # softmax over candidates of -L or -3L (L: tokens with EOS)
    cands = ['red', 'blue', 'green', 'tea cup', 'sky']
    lens = np.array([len(c) + 1 for c in cands])
    lp = np.where(np.array([c[0] for c in cands]) == fav[0], -1.0, -3.0) * lens
    p = np.exp(lp - lp.max())
    return (p / p.sum()).max()
  confs = np.array([conf('red'), conf('blue'), conf('green'), conf('green')])
  assert res.confidences == pytest.approx(confs)
  assert m['ece'] == pytest.approx(calibration.ece(confs, np.array([1, 1, 0, 1], float)))
  assert [p['ranked'] for p in res.predictions] == ['red', 'blue', 'green', 'green']
  assert [p['generated'] for p in res.predictions] == ['red', 'Blue.', 'green', 'green']


def test_svamp_and_postprocessed_outputs_use_sequence_probability():
  ev = _evaluator('test_eval_svamp', ['3x', '4x'], ['( 1.0 + 2.0 )', '( 2.0 * 3.0 )'])
  res = evaluation.student_eval(ev, *_fake_fns(['(1 + 2)', '(2 + 2)'], ['x', 'x']), 'svamp')
  assert res.metrics['accuracy'] == 50.0 and 'rank_accuracy' not in res.metrics
  assert res.confidences == pytest.approx([np.exp(-0.5)] * 2)
  assert res.metrics['ece'] == pytest.approx(abs(0.5 - np.exp(-0.5)))
  # A postprocessor (chain of thought): gold and prediction both go through it.
  last = lambda s, example=None, is_target=False: s.rsplit(' ', 1)[-1]
  ev = _evaluator('test_eval_cot', ['0' + CQA_INPUT], ['because so red'], last)
  res = evaluation.student_eval(ev, *_fake_fns(['thus red'], ['x']), 'cqa')
  assert res.metrics['accuracy'] == 100.0 and res.metrics['confidence_source'] == 1.0
  assert res.predictions[0]['gold'] == 'red'


def test_predictions_round_trip(tmp_path):
  preds = [{'id': '0', 'confidence': 0.25, 'correct': True},
           {'id': '1', 'confidence': 0.75, 'correct': False}]
  evaluate_lib.write_results(str(tmp_path), {'accuracy': 50.0}, preds)
  conf, correct = evaluate_lib.read_predictions(str(tmp_path))
  assert conf.tolist() == [0.25, 0.75] and correct.tolist() == [True, False]
  assert (tmp_path / 'eval_results.json').read_text().startswith('{')
