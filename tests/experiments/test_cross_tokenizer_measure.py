"""The cross-tokenizer measurement (experiments/cross_tokenizer_measure.py) on a toy corpus."""
import numpy as np
import pytest

from distill_sbs.experiments import cross_tokenizer_measure as m

TEXTS = ['the cat sat on the mat', 'the dog sat on the cat', 'a cat ran far', 'the mat ran']
WORDS = sorted({w for t in TEXTS for w in t.split()})


@pytest.fixture(scope='module')
def lm():
  return m.ByteNgram([m.BOS + b' ' + t.encode() for t in TEXTS * 3], order=4)


def _pieces(words):
  pieces = {bytes([b]): b + 3 for b in range(256)}
  for w in words:
    pieces.setdefault((' ' + w).encode(), len(pieces) + 3)
  return pieces


def test_byte_model_and_next_token_distribution(lm):
  d = lm.dist(lm.context(b' the c'))
  assert d.sum() == pytest.approx(1.0) and d[ord('a')] > 0.5
  # Over single bytes, the next-token distribution is the byte distribution.
  nt = m.next_token_dist(lm, b' the c', m.Trie(m.byte_pieces()))
  assert nt[ord('a') + 3] == pytest.approx(d[ord('a')], rel=1e-6)
  # With word pieces it still sums to one (up to the pruned branches).
  trie = m.Trie(_pieces(WORDS))
  assert sum(m.next_token_dist(lm, b' the', trie).values()) == pytest.approx(1.0, abs=1e-4)
  assert [t for _, t in trie.tokenize(b' the cats')] == [b' the', b' cat', b's']


def test_identity_reference_and_a_byte_teacher(lm):
  student = m.LongestMatchVocab(_pieces(WORDS))
  texts = TEXTS[:2]
  same = m.measure(lm, student, _pieces(WORDS), texts)
  assert same['aligned_share'] == 1.0 and same['carried_mass_share'] == pytest.approx(1.0)
  assert abs(same['kl_carried']) < 1e-6
  assert same['exact_mass_on_carried'] == pytest.approx(same['exact_top5_mass'], abs=1e-4)
  # A byte teacher aligns only with the student's one-byte tokens (here: none but spaces).
  byte = m.measure(lm, student, m.byte_pieces(), texts)
  assert byte['aligned_share'] < 0.2
  # A coarser teacher (two-word pieces) loses the split words.
  coarse = _pieces(WORDS)
  coarse[b' the cat'] = 999
  merged = m.measure(lm, student, coarse, texts)
  assert merged['aligned_share'] < 1.0
  assert np.isfinite(merged['kl_carried'])
  assert '| bytes' in m.to_markdown({'results': {'bytes': byte}})
