"""Label accuracy metrics (seqio `(targets, predictions)` signature)."""
import pytest

from distill_sbs.metrics import accuracy


def test_normalize_answer():
  assert accuracy.normalize_answer('  Wooded   Area. ') == 'wooded area'
  assert accuracy.normalize_answer(b'"Neutral"') == 'neutral'


def test_exact_match():
  out = accuracy.exact_match(['wooded area', 'zoo', 'pay debts', 'east'],
                             ['Wooded area.', 'zoo', 'pay debt', ''])
  assert out == {'accuracy': 50.0}
  assert accuracy.exact_match([], []) == {'accuracy': 0.0}
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    accuracy.exact_match(['a', 'b'], ['a'])


def test_nli_per_class_accuracy():
  t = ['entailment', 'entailment', 'neutral', 'contradiction', 'contradiction',
       'contradiction']
  p = ['entailment', 'neutral', 'neutral', 'contradiction', 'maybe', 'entailment']
  out = accuracy.nli_accuracy(t, p)
  assert out['accuracy'] == pytest.approx(100 * 3 / 6)
  assert out['accuracy_entailment'] == pytest.approx(50.0)
  assert out['accuracy_neutral'] == pytest.approx(100.0)
  assert out['accuracy_contradiction'] == pytest.approx(100 / 3)
  assert out['invalid_rate'] == pytest.approx(100 / 6)


def test_mean_log_likelihood():
  assert accuracy.mean_log_likelihood(['a', 'b'], [-1.0, -3.0]) == {
      'mean_log_likelihood': -2.0}
