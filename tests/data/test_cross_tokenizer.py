"""Carrying a teacher's top-k from its tokenizer onto the student's vocabulary.

Hand-built tokenizations with exact expected rows: a SentencePiece student whose
pieces the test writes itself (`_spm`), and the byte vocabulary.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from distill_sbs.data import cross_tokenizer as ct
from distill_sbs.data import schema
from distill_sbs.distill import losses
from tests.data.spm_helpers import write_spm_model

ABSENT = ct.ABSENT_LOGPROB
BYTES = seqio.ByteVocabulary(extra_ids=0)
# Student pieces: ids 0 pad, 1 eos, 2 unk, then these from id 3 (scores fall with the index).
PIECES = ['▁the', '▁cat', '▁', 'the', 'c', 'a', 't', 'h', 'e', 's', '▁sat', 'at', '€']
ID = {p: i + 3 for i, p in enumerate(PIECES)}


@pytest.fixture(scope='module')
def spm_vocab(tmp_path_factory):
  path = write_spm_model(tmp_path_factory.mktemp('spm') / 'student.model', PIECES)
  return seqio.SentencePieceVocabulary(path, extra_ids=0)


def _row(pairs, k=5):
  ids = np.zeros(k, np.int32)
  lps = np.full(k, ABSENT, np.float32)
  for j, (i, lp) in enumerate(pairs):
    ids[j], lps[j] = i, lp
  return ids, lps


def _check(out, rows, weights):
  ids, lps, w = out
  want_ids = np.stack([_row(r)[0] for r in rows])
  want_lps = np.stack([_row(r)[1] for r in rows])
  np.testing.assert_array_equal(w, np.asarray(weights, np.float32))
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(lps, want_lps, rtol=0, atol=1e-6)


def test_student_pieces_as_bytes(spm_vocab):
  assert spm_vocab.encode('the cat sat') == [ID['▁the'], ID['▁cat'], ID['▁sat']]
  assert spm_vocab.encode('the hat') == [ID['▁the'], ID['▁'], ID['h'], ID['at']]
  sv = ct.student_vocab(spm_vocab)
  assert sv.piece_bytes(ID['▁the']) == b' the' and sv.piece_bytes(1) == b''
  assert sv.first_id(b' the') == ID['▁the']      # exact piece
  assert sv.first_id(b'at') == ID['at']          # mid-word: no dummy prefix
  assert sv.first_id(b'hat') == ID['h']
  assert sv.first_id(b' hat') == ID['▁']         # word-initial: '▁' + 'h' + 'at'
  assert sv.first_id(b'x') is None               # unknown to the student


def test_identical_tokenizations_give_the_teacher_topk_exactly(spm_vocab):
  ids = spm_vocab.encode('the cat sat') + [1]
  tokens = [b' the', b' cat', b' sat', b'</s>']
  topk = [[(b' the', -0.25), (b' cat', -1.5), (b'the', -2.5), (b'a', -4.0)],
          [(b' cat', -0.125), (b'at', -3.0), (b' sat', -3.5), (b'h', -5.0), (b'e', -6.0)],
          [(b' sat', -0.5), (b' the', -1.0), (b'</s>', -3.0)],
          [(b'</s>', -0.01), (b' the', -5.0)]]
  out = ct.carry_topk(spm_vocab, ids, tokens, topk, k=5)
  _check(out, [[(ID['▁the'], -0.25), (ID['▁cat'], -1.5), (ID['the'], -2.5), (ID['a'], -4.0)],
               [(ID['▁cat'], -0.125), (ID['at'], -3.0), (ID['▁sat'], -3.5), (ID['h'], -5.0),
                (ID['e'], -6.0)],
               [(ID['▁sat'], -0.5), (ID['▁the'], -1.0), (1, -3.0)],
               [(1, -0.01), (ID['▁the'], -5.0)]], [1, 1, 1, 1])


def test_identity_random_bytes_exact():
  """Byte teacher = byte student: every row is the teacher's own, weights 1."""
  rng = np.random.default_rng(0)
  text = 'naïve café, 3 €!'.encode('utf-8')
  ids = [b + 3 for b in text] + [1]
  tokens = [bytes([b]) for b in text] + [b'']
  topk, want = [], []
  for t in tokens:
    alts = [t] + [bytes([b]) for b in rng.choice(np.arange(32, 127), 4, replace=False)
                  if bytes([b]) != t][:3]
    lps = np.sort(rng.uniform(-6, 0, len(alts)).astype(np.float32))[::-1]
    topk.append(list(zip(alts, lps.tolist())))
    want.append([((a[0] + 3) if a else 1, lp) for a, lp in zip(alts, lps.tolist())])
  out = ct.carry_topk(BYTES, ids, tokens, topk, k=5)
  _check(out, want, [1] * len(ids))


def test_alternatives_mapping_to_one_student_token_add_up(spm_vocab):
  ids = spm_vocab.encode('the cat')
  tokens = [b' the', b' cat']
  topk = [[(b' the', -0.5)],
          [(b' cat', -1.0), (b' hat', -1.5), (b' h', -2.0), (b'\xe2\x82\xac', -3.0), (b'x', -4.0)]]
  *out, stats = ct.carry_topk_with_stats(spm_vocab, ids, tokens, topk, k=5)
  # ' hat' and ' h' both begin with the student's '▁'; 'x' is unknown: rest bucket.
  _check(out, [[(ID['▁the'], -0.5)],
               [(ID['▁cat'], -1.0), (ID['▁'], float(np.logaddexp(-1.5, -2.0))),
                (ID['€'], -3.0)]], [1, 1])
  assert stats.aligned == 2 and stats.zero == 0
  assert stats.teacher_mass == pytest.approx(sum(math.exp(x) for x in (-.5, -1, -1.5, -2, -3, -4)))
  assert stats.carried_mass == pytest.approx(stats.teacher_mass - math.exp(-4.0))


def test_merge_and_split_are_not_one_to_one(spm_vocab):
  # Merge: the teacher's ' hat' covers the student's '▁', 'h', 'at'.
  ids = spm_vocab.encode('the hat')   # ▁the ▁ h at
  tokens, topk = [b' the', b' hat'], [[(b' the', -0.1)], [(b' hat', -0.2), (b' cat', -2.0)]]
  out = ct.carry_topk(spm_vocab, ids, tokens, topk)
  _check(out, [[(ID['▁the'], -0.1)], [], [], []], [1, 0, 0, 0])
  # Split: the student's '▁cat' is the teacher's ' c' + 'at'.
  ids = spm_vocab.encode('the cat')
  tokens = [b' the', b' c', b'at']
  topk = [[(b' the', -0.1)], [(b' c', -0.3), (b' s', -1.5), (b' t', -2.5)], [(b'at', -0.2)]]
  _, _, _, stats = ct.carry_topk_with_stats(spm_vocab, ids, tokens, topk)
  out = ct.carry_topk(spm_vocab, ids, tokens, topk)
  _check(out, [[(ID['▁the'], -0.1)], []], [1, 0])
  assert (stats.positions, stats.aligned, stats.zero) == (2, 1, 1)
  # ULD: the sorted log-probs of the teacher token at the student token's first byte, ids 0.
  ids_u, lps_u, w_u = ct.carry_topk(spm_vocab, ids, tokens, topk, mismatch='uld')
  np.testing.assert_array_equal(w_u, [1, 1])
  np.testing.assert_array_equal(ids_u[1], 0)
  np.testing.assert_allclose(lps_u[1], [-0.3, -1.5, -2.5, ABSENT, ABSENT])
  assert ct.is_uld_row(ids_u, lps_u).tolist() == [False, True]
  with pytest.raises(ValueError, match='mismatch'):
    ct.carry_topk(spm_vocab, ids, tokens, topk, mismatch='drop')


def test_whitespace_conventions(spm_vocab):
  # Chat teachers start without the space the student's dummy prefix adds:
  # alternatives at the start map to word-initial pieces.
  ids = spm_vocab.encode('the cat')
  tokens = [b'the', b' cat']
  topk = [[(b'the', -0.1), (b'cat', -2.0), (b' sat', -3.0)],
          [(b' cat', -0.2), (b'at', -2.0), (b' the', -3.0)]]
  out = ct.carry_topk(spm_vocab, ids, tokens, topk)
  _check(out, [[(ID['▁the'], -0.1), (ID['▁cat'], -2.0), (ID['▁sat'], -3.0)],
               [(ID['▁cat'], -0.2), (ID['at'], -2.0), (ID['▁the'], -3.0)]], [1, 1])
  # Token spellings of SentencePiece and byte-level BPE teachers.
  assert ct.token_bytes('▁the', 'sentencepiece') == b' the'
  assert ct.token_bytes('Ġcat', 'byte_bpe') == b' cat'
  assert ct.token_bytes('ĊĊ', 'byte_bpe') == b'\n\n'
  assert ct.token_bytes('<|im_end|>', 'byte_bpe') == b'<|im_end|>'
  assert ct.detect_convention(['▁the', '▁cat'], 'the cat') == 'sentencepiece'
  assert ct.detect_convention(['The', 'Ġcat', 'Ċ'], 'The cat\n') == 'byte_bpe'
  assert ct.detect_convention(['The', ' cat'], 'The cat') == 'text'
  tok, top, conv = ct.decode_teacher_tokens(['▁the', '▁cat'], [[('▁the', -0.1)], [('▁c', -1.0)]],
                                            'the cat')
  assert (tok, top, conv) == ([b' the', b' cat'], [[(b' the', -0.1)], [(b' c', -1.0)]],
                              'sentencepiece')
  out2 = ct.carry_topk(spm_vocab, ids, tok, [[(b' the', -0.1)], [(b' c', -1.0)]])
  _check(out2, [[(ID['▁the'], -0.1)], [(ID['▁'], -1.0)]], [1, 1])


def test_byte_fallback_tokens():
  # A SentencePiece teacher spells '€' as three byte-fallback tokens; a byte student
  # has the same three bytes: one to one, each alternative byte its student byte.
  text = 'a€'
  ids = [b + 3 for b in text.encode()] + [1]
  raw = ['▁a', '<0xE2>', '<0x82>', '<0xAC>', '</s>']
  raw_top = [[('▁a', -0.1)], [('<0xE2>', -0.2), ('<0xC3>', -1.7)], [('<0x82>', -0.01)],
             [('<0xAC>', -0.05), ('<0xA0>', -3.0)], [('</s>', -0.3), ('▁b', -1.4)]]
  tok, top, conv = ct.decode_teacher_tokens(raw, raw_top, text)
  assert conv == 'sentencepiece' and tok[1:4] == [b'\xe2', b'\x82', b'\xac']
  out = ct.carry_topk(BYTES, ids, tok, top)
  _check(out, [[], [(0xE2 + 3, -0.2), (0xC3 + 3, -1.7)], [(0x82 + 3, -0.01)],
               [(0xAC + 3, -0.05), (0xA0 + 3, -3.0)], [(1, -0.3), (ord(' ') + 3, -1.4)]],
         [0, 1, 1, 1, 1])   # ' a' (the teacher's dummy prefix) is not the student's 'a'


def test_unicode_split_across_tokens():
  # Byte-level BPE: 'café' as 'cafÃ' + '©' (the 'é' bytes C3 A9 split across tokens).
  text = 'café'
  tok, top, conv = ct.decode_teacher_tokens(['cafÃ', '©'], [[('cafÃ', -0.4)],
                                                         [('©', -0.1), ('¨', -2.5)]], text)
  assert conv == 'byte_bpe' and tok == [b'caf\xc3', b'\xa9']
  ids = [b + 3 for b in text.encode()]
  out = ct.carry_topk(BYTES, ids, tok, top)
  _check(out, [[], [], [], [], [(0xA9 + 3, -0.1), (0xA8 + 3, -2.5)]], [0, 0, 0, 0, 1])
  # OpenAI spells a token that is not whole UTF-8 as 'bytes:\\xNN'.
  assert ct.token_bytes('bytes:\\xc3') == b'\xc3'
  assert ct.token_bytes('bytes:\\xc3\\xa9', 'byte_bpe') == b'\xc3\xa9'
  # A SentencePiece student with '€' as one piece: the byte tokens do not align.
  sv_text = '€'.encode()
  out = ct.carry_topk(BYTES, [b + 3 for b in sv_text], [sv_text[:2], sv_text[2:]],
                      [[(sv_text[:2], -0.1)], [(sv_text[2:], -0.1)]])
  np.testing.assert_array_equal(out[2], [0, 0, 1])


def test_completion_cut_by_a_stop_sequence(spm_vocab):
  ids = spm_vocab.encode('the cat') + [1]
  # The stop sequence is a token of its own: the student's EOS takes its mass,
  # plus alternatives starting with a stop sequence and the teacher's EOS.
  tokens = [b'the', b' cat', b'\n\n']
  topk = [[(b'the', -0.1)], [(b' cat', -0.2)],
          [(b'\n\n', -0.5), (b' sat', -1.5), (b'\n\nQ', -2.0), (b'<|im_end|>', -3.0), (b'\n', -3.5)]]
  out = ct.carry_topk(spm_vocab, ids, tokens, topk, stop=('\n\n',))
  eos = float(np.logaddexp.reduce([-0.5, -2.0, -3.0]))
  # '\n' begins with the student's '▁' (its encoding of whitespace-initial text).
  _check(out, [[(ID['▁the'], -0.1)], [(ID['▁cat'], -0.2)],
               [(1, eos), (ID['▁sat'], -1.5), (ID['▁'], -3.5)]], [1, 1, 1])
  # The stop sequence inside the last token (' cat\n\n'): neither that token
  # nor the EOS aligns.
  out = ct.carry_topk(spm_vocab, ids, [b'the', b' cat\n\n'], [[(b'the', -0.1)],
                                                            [(b' cat\n\n', -0.2)]],
                      stop=('\n\n',))
  _check(out, [[(ID['▁the'], -0.1)], [], []], [1, 0, 0])
  # A server that sent no token past the text: the EOS row has weight 0.
  out = ct.carry_topk(spm_vocab, ids, [b'the', b' cat'], [[(b'the', -0.1)], [(b' cat', -0.2)]])
  np.testing.assert_array_equal(out[2], [1, 1, 0])


def test_student_text_the_teacher_did_not_produce(spm_vocab):
  # Student normalisation (here an unknown 'x') differs from the teacher's bytes:
  # only the tokens inside matching byte blocks align.
  ids = spm_vocab.encode('the x cat')   # ▁the ▁ <unk> ▁cat
  tokens = [b'the', b' x', b' cat']
  topk = [[(b'the', -0.1)], [(b' x', -0.1)], [(b' cat', -0.1)]]
  out = ct.carry_topk(spm_vocab, ids, tokens, topk)
  np.testing.assert_array_equal(out[2], [1, 0, 0, 1])


def test_identity_through_the_records_and_the_loss(spm_vocab):
  """Carried rows of an identical tokenization survive the record encoding
  bit for bit and give the top-k KL of the teacher's own rows; weight-0 rows
  (all absent) add no KL and no gradient."""
  ids = spm_vocab.encode('the cat sat') + [1]
  tokens = [b' the', b' cat', b' sat', b'']
  topk = [[(b' the', -0.25), (b' cat', -1.5)], [(b' cat', -0.125), (b'at', -3.0)],
          [(b' sat', -0.5), (b' the', -1.0), (b'', -3.0)], [(b'', -0.0625), (b' the', -5.0)]]
  c_ids, c_lps, w = ct.carry_topk(spm_vocab, ids, tokens, topk, k=3)
  rec = schema.from_example(schema.to_example(
      {'id': 'x', **schema.encode_topk(c_ids, c_lps, spm_vocab.vocab_size),
       'teacher_target_ids': np.asarray(ids, np.int64)}).SerializeToString())
  r_ids, r_lps = schema.decode_topk(rec)
  np.testing.assert_array_equal(r_ids, c_ids)
  np.testing.assert_array_equal(r_lps, c_lps)   # all exact in float16
  teacher_ids = np.array([[ID['▁the'], ID['▁cat'], 0], [ID['▁cat'], ID['at'], 0],
                          [ID['▁sat'], ID['▁the'], 1], [1, ID['▁the'], 0]], np.int32)
  teacher_lps = np.array([[-0.25, -1.5, ABSENT], [-0.125, -3.0, ABSENT], [-0.5, -1.0, -3.0],
                          [-0.0625, -5.0, ABSENT]], np.float32)
  np.testing.assert_array_equal(r_ids, teacher_ids)
  np.testing.assert_array_equal(r_lps, teacher_lps)
  logits = jax.random.normal(jax.random.PRNGKey(0), (1, 4, spm_vocab.vocab_size))
  for rest in (False, True):
    kl_c = losses.topk_kl_per_token(logits, r_ids[None], r_lps[None], rest_bucket=rest)
    kl_t = losses.topk_kl_per_token(logits, teacher_ids[None], teacher_lps[None], rest_bucket=rest)
    np.testing.assert_allclose(kl_c, kl_t, rtol=1e-6)
  # A weight-0 row (not one to one) is all absent: KL 0 and no gradient.
  zero_ids, zero_lps = np.zeros((1, 1, 3), np.int32), np.full((1, 1, 3), ABSENT, np.float32)
  for rest in (False, True):
    f = lambda z: losses.topk_kl_per_token(z, zero_ids, zero_lps, rest_bucket=rest).sum()
    z = logits[:, :1]
    assert abs(float(f(z))) < 1e-6
    assert float(jnp.abs(jax.grad(f)(z)).max()) < 1e-6
  batch = {'decoder_target_tokens': jnp.asarray([ids]), 'decoder_loss_weights': jnp.ones((1, 4)),
           'decoder_topk_ids': jnp.asarray(r_ids[None]),
           'decoder_topk_logprobs': jnp.asarray(r_lps[None])}
  loss, metrics = losses.TopKDistillLoss(rest_bucket=True)(logits, batch)
  assert np.isfinite(float(loss)) and float(metrics['kl']) > 0


def test_raw_teacher_topk_round_trip():
  tokens = [b' the', b'\xc3', b'\xa9', b'']
  topk = [[(b' the', -0.25), (b' a', -2.0)], [(b'\xc3', -0.5)], [(b'\xa9', -0.125), (b' the', -3.0)],
          [(b'', -0.0625)]]
  blob = ct.encode_teacher_topk(tokens, topk)
  assert ct.decode_teacher_topk(blob) == (tokens, topk)   # values exact in float16
  # Each distinct string is stored once.
  assert blob.count(b' the') == 1


def test_ambiguous_short_alternatives_can_go_to_the_rest_bucket(spm_vocab):
  ids = spm_vocab.encode('the cat')
  tokens = [b' the', b' cat']
  # ' c' and ' s' are shorter than the student pieces '▁cat' / '▁sat' they begin.
  topk = [[(b' the', -0.1)], [(b' cat', -0.5), (b' c', -1.5), (b' s', -2.0), (b'at', -3.0)]]
  first = ct.carry_topk(spm_vocab, ids, tokens, topk)
  _check(first, [[(ID['▁the'], -0.1)],
                 [(ID['▁cat'], -0.5), (ID['▁'], float(np.logaddexp(-1.5, -2.0))), (ID['at'], -3.0)]],
         [1, 1])
  rest = ct.carry_topk(spm_vocab, ids, tokens, topk, ambiguous='rest')
  _check(rest, [[(ID['▁the'], -0.1)], [(ID['▁cat'], -0.5), (ID['at'], -3.0)]], [1, 1])
  # Identical tokenizations stay exact under 'rest' with a byte student.
  text = b'abc'
  out = ct.carry_topk(BYTES, [b + 3 for b in text], [text[:1], text[1:2], text[2:]],
                      [[(b'a', -0.1), (b'b', -2.0)], [(b'b', -0.2)], [(b'c', -0.3)]],
                      ambiguous='rest')
  _check(out, [[(ord('a') + 3, -0.1), (ord('b') + 3, -2.0)], [(ord('b') + 3, -0.2)],
               [(ord('c') + 3, -0.3)]], [1, 1, 1])


def test_the_teacher_order_is_kept_and_the_k_largest_chosen():
  text = b'ab'
  ids = [b + 3 for b in text]
  # An unsorted top-k comes back in its own order; with more than k distinct
  # ids the k largest stay, in that order.
  topk = [[(b'x', -2.0), (b'a', -0.5), (b'y', -1.0)], [(b'b', -0.1)]]
  out = ct.carry_topk(BYTES, ids, [b'a', b'b'], topk, k=5)
  _check(out, [[(ord('x') + 3, -2.0), (ord('a') + 3, -0.5), (ord('y') + 3, -1.0)],
               [(ord('b') + 3, -0.1)]], [1, 1])
  ids2, lps2, _ = ct.carry_topk(BYTES, ids, [b'a', b'b'], topk, k=2)
  np.testing.assert_array_equal(ids2[0], [ord('a') + 3, ord('y') + 3])
