"""Student evaluation: generation accuracy, rank classification, ECE by hand."""
import numpy as np
import pytest
import seqio

from distill_sbs.experiments import evaluate

VOCAB = seqio.ByteVocabulary(extra_ids=0)
CQA_INPUT = 'Q?\nAnswer Choices:\n(a) red\n(b) blue\n(c) green\n(d) tea cup\n(e) sky'


def test_candidates():
  assert evaluate.candidates('cqa', CQA_INPUT) == ['red', 'blue', 'green', 'tea cup', 'sky']
  assert evaluate.candidates('esnli', 'x') == ['entailment', 'neutral', 'contradiction']
  assert evaluate.candidates('svamp', 'x') is None
  with pytest.raises(ValueError, match='Answer Choices'):
    evaluate.candidates('cqa', 'no choices here')


def _fake_fns(answers, favourite):
  """generate returns `answers[i]`; score gives -1 per token to the candidate
  starting with favourite[i]'s first byte and -3 per token otherwise."""
  state = {'i': 0}

  def generate_fn(enc):
    n = enc.shape[0]
    out = np.zeros((n, 12), np.int32)
    for j in range(n):
      k = min(state['i'] + j, len(answers) - 1)
      ids = VOCAB.encode(answers[k]) + [1]
      out[j, :len(ids)] = ids
    state['i'] += n
    return out, np.full((n,), -0.5)

  def score_fn(enc, targets):
    first = targets[:, 0]
    row_fav = np.array([VOCAB.encode(favourite[int(e[0]) - ord('0') - 3])[0] for e in enc])
    per_tok = np.where(first == row_fav, -1.0, -3.0)
    return np.where(targets > 0, per_tok[:, None], 0.0)

  return generate_fn, score_fn


def test_evaluate_records_hand_values():
  # Record i's input starts with the digit i so the fake scorer knows the row.
  recs = [{'id': f'r{i}', 'inputs': f'{i}' + CQA_INPUT, 'label': lab}
          for i, lab in enumerate(['red', 'blue', 'sky', 'green'])]
  gen, score = _fake_fns(['red', 'Blue.', 'green', 'green'], ['red', 'blue', 'green', 'green'])
  res = evaluate.evaluate_records(recs, 'cqa', VOCAB, gen, score, input_length=64,
                                  batch_size=3)
  m = res.metrics
  assert m['accuracy'] == 75.0  # 'Blue.' normalises to 'blue'; 'green' != 'sky'
  assert m['rank_accuracy'] == 75.0
  # Confidence of the favourite: sum log-probs -L vs -3L; for 'red' (4 tokens
  # with EOS) vs others; compute by hand from the softmax over candidates.
  def conf(fav):
    cands = ['red', 'blue', 'green', 'tea cup', 'sky']
    lens = np.array([len(c) + 1 for c in cands])
    first = np.array([c[0] for c in cands])
    lp = np.where(first == fav[0], -1.0, -3.0) * lens
    p = np.exp(lp - lp.max())
    return (p / p.sum()).max()
  confs = np.array([conf('red'), conf('blue'), conf('green'), conf('green')])
  assert res.confidences == pytest.approx(confs)
  correct = np.array([1, 1, 0, 1], float)
  assert m['ece'] == pytest.approx(
      __import__('distill_sbs.metrics.calibration', fromlist=['x']).ece(confs, correct))
  assert [p['ranked'] for p in res.predictions] == ['red', 'blue', 'green', 'green']
  assert [p['generated'] for p in res.predictions] == ['red', 'Blue.', 'green', 'green']


def test_svamp_uses_sequence_probability():
  recs = [{'id': 'a', 'inputs': '3x', 'label': '( 1.0 + 2.0 )'},
          {'id': 'b', 'inputs': '4x', 'label': '( 2.0 * 3.0 )'}]
  gen, score = _fake_fns(['(1 + 2)', '(2 + 2)'], ['x', 'x'])
  res = evaluate.evaluate_records(recs, 'svamp', VOCAB, gen, score, input_length=16)
  assert res.metrics['accuracy'] == 50.0 and 'rank_accuracy' not in res.metrics
  assert res.confidences == pytest.approx([np.exp(-0.5)] * 2)
  assert res.metrics['ece'] == pytest.approx(abs(0.5 - np.exp(-0.5)))


def test_real_tiny_model_runs():
  import jax
  from distill_sbs import models
  cfg = models.T5Config(vocab_size=VOCAB.vocab_size, emb_dim=16, num_heads=2,
                        num_encoder_layers=1, num_decoder_layers=1, head_dim=8, mlp_dim=32)
  enc = np.ones((2, 8), np.int32)
  params = models.Transformer(cfg).init(jax.random.PRNGKey(0), enc, enc, enc,
                                        enable_dropout=False)['params']
  gen, score = evaluate.model_fns(cfg, params, max_decode_length=6)
  recs = [{'id': str(i), 'inputs': f'Premise: p{i}\nHypothesis: h', 'label': 'neutral'}
          for i in range(3)]
  res = evaluate.evaluate_records(recs, 'esnli', VOCAB, gen, score, input_length=32,
                                  batch_size=2)
  assert 0 <= res.metrics['ece'] <= 1 and len(res.predictions) == 3
  assert all(1 / 3 - 1e-6 <= c <= 1 for c in res.confidences)
