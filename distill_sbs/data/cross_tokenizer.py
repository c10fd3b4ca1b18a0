"""Teacher top-k in the teacher's tokenizer, carried onto the student's vocabulary.

Pure NumPy (no TensorFlow): a served teacher (vLLM, SGLang, ...) returns, per
generated token, its text / bytes and its top-k alternatives in *its* tokenizer.
`carry_topk` turns them into FIRST top-k rows over the *student's* vocabulary,
one row per student target token:

  1. Byte spans of both tokenizations of the completion (student pieces with
     SentencePiece's '▁' as a space; teacher tokens as bytes, see
     `decode_teacher_tokens`). A leading space the student's dummy prefix adds
     and the teacher lacks is dropped; elsewhere the two byte streams are
     aligned with `difflib` (they differ where the student normalises text).
  2. A student token whose span equals one teacher token's span (one to one):
     each teacher alternative maps to the student token its text begins with
     (the exact student piece when there is one, else the first id of the
     student's encoding of the text: word-initial '▁' pieces for text starting
     with a space, or at the start of the completion when the student's dummy
     prefix was dropped; mid-word pieces otherwise); alternatives mapping to
     the same student token add up; the rest of the mass is left to the loss's
     rest bucket (`TopKDistillLoss(rest_bucket=True)`: 1 − Σ stored mass).
  3. The student's EOS row carries the teacher token that starts where the
     completion text ends (the teacher's EOS, or the token a stop sequence cut):
     that token, teacher EOS tokens and alternatives starting with a stop
     sequence map to the student's EOS.
     An alternative shorter than some student piece it begins (a byte
     teacher's ' ' before the student's ' the') is ambiguous:
     `ambiguous='first'` (the default, exact when the tokenizations are equal)
     gives its mass to the student token it begins with; `ambiguous='rest'`
     leaves it to the rest bucket (docs/cross_tokenizer.md measures both).
  4. Other positions (merges, splits, student text the teacher did not
     produce): `mismatch='zero'` gives loss weight 0 (the row is all absent:
     id 0, log-prob −1e4, so the top-k KL of the unchanged loss is 0 there);
     `mismatch='uld'` stores the sorted top-k log-probs of the teacher token
     starting at (or covering) the student token's first byte, with ids all 0
     (pad), for the sorted-probability loss `distill.uld.CrossTokenizerTopKLoss`
     (Boizard et al., 2024).

When the teacher's tokenization equals the student's, the output equals the
teacher's own top-k exactly with all weights 1.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
from typing import Any, Iterable, Optional, Sequence

import numpy as np

ABSENT_LOGPROB = -1e4   # stored log-prob of an absent entry (losses.ABSENT_LOGPROB = -1e3)
MISMATCH_MODES = ('zero', 'uld')
AMBIGUOUS_MODES = ('first', 'rest')
# Teacher tokens meaning "end of sequence" (as bytes; b'' is a special token the
# server detokenised to nothing).
TEACHER_EOS = (b'', b'</s>', b'<|endoftext|>', b'<|im_end|>', b'<|eot_id|>',
               b'<|end|>', b'<end_of_turn>', b'<eos>', b'<|end_of_text|>')
CONVENTIONS = ('text', 'sentencepiece', 'byte_bpe')

_BYTE_FALLBACK = re.compile(r'^<0x([0-9A-Fa-f]{2})>$')
_BYTES_PREFIX = 'bytes:'   # OpenAI: a token that is not whole UTF-8, as 'bytes:\\xe2\\x80'


# ----------------------------------------------------------- teacher tokens

@functools.lru_cache(maxsize=1)
def gpt2_byte_decoder() -> dict[str, int]:
  """Inverse of GPT-2's `bytes_to_unicode` (byte-level BPE: 'Ġ' = space, 'Ċ' = newline)."""
  bs = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
        + list(range(ord('®'), ord('ÿ') + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(token: str, convention: str = 'text') -> bytes:
  """The bytes of one teacher token string under a tokenizer convention.

  'text': the token is its text (UTF-8); 'sentencepiece': '▁' is a space and
  '<0xNN>' a byte-fallback byte; 'byte_bpe': GPT-2's byte-to-unicode table
  ('Ġ' space, 'Ċ' newline). In every convention 'bytes:\\xNN...' (OpenAI's
  spelling of a partial UTF-8 token) and '<0xNN>' are raw bytes.
  """
  if token.startswith(_BYTES_PREFIX):
    rest = token[len(_BYTES_PREFIX):]
    try:
      return rest.encode('latin-1').decode('unicode_escape').encode('latin-1')
    except (UnicodeDecodeError, UnicodeEncodeError):
      return rest.encode('utf-8')
  m = _BYTE_FALLBACK.match(token)
  if m:
    return bytes([int(m.group(1), 16)])
  if convention == 'text':
    return token.encode('utf-8')
  if convention == 'sentencepiece':
    return token.replace('\u2581', ' ').encode('utf-8')
  if convention == 'byte_bpe':
    table = gpt2_byte_decoder()
    if all(ch in table for ch in token):
      return bytes(table[ch] for ch in token)
    return token.encode('utf-8')   # e.g. a special token outside the table
  raise ValueError(f'unknown teacher token convention {convention!r}; expected {CONVENTIONS}')


def _common_prefix(a: bytes, b: bytes) -> int:
  n = min(len(a), len(b))
  i = 0
  while i < n and a[i] == b[i]:
    i += 1
  return i


def detect_convention(tokens: Sequence[str], text: str) -> str:
  """The convention whose decoded tokens reproduce `text` best (longest common
  prefix with the text's bytes, a leading space forgiven; ties: `CONVENTIONS` order)."""
  want = text.encode('utf-8')
  best, best_n = 'text', -1
  for conv in CONVENTIONS:
    got = b''.join(token_bytes(t, conv) for t in tokens)
    n = max(_common_prefix(got, want), _common_prefix(got, b' ' + want) - 1,
            _common_prefix(got[1:], want) if got[:1] == b' ' else -1)
    if n > best_n:
      best, best_n = conv, n
  return best


def decode_teacher_tokens(tokens: Sequence[str], top_logprobs: Sequence[Sequence[tuple[str, float]]],
                          text: str, *, convention: str = 'auto',
                          tokens_bytes: Optional[Sequence[Optional[Sequence[int]]]] = None,
                          top_bytes: Optional[Sequence[Sequence[Optional[Sequence[int]]]]] = None,
                          ) -> tuple[list[bytes], list[list[tuple[bytes, float]]], str]:
  """(teacher tokens as bytes, top-k as (bytes, log-prob), convention) of one
  completion. Byte lists a server sent (chat `bytes`) win over the strings."""
  conv = detect_convention(tokens, text) if convention == 'auto' else convention
  out_tok = []
  for i, t in enumerate(tokens):
    b = tokens_bytes[i] if tokens_bytes is not None and i < len(tokens_bytes) else None
    out_tok.append(bytes(b) if b is not None else token_bytes(t, conv))
  out_top = []
  for i, alts in enumerate(top_logprobs):
    row = []
    for j, (a, lp) in enumerate(alts):
      b = None
      if top_bytes is not None and i < len(top_bytes) and j < len(top_bytes[i]):
        b = top_bytes[i][j]
      row.append((bytes(b) if b is not None else token_bytes(a, conv), float(lp)))
    out_top.append(row)
  return out_tok, out_top, conv


# ---------------------------------------------------------- student vocabulary

class StudentVocab:
  """Byte view of a `seqio.Vocabulary` (SentencePiece, byte, or any other)."""

  def __init__(self, vocabulary: Any):
    v = getattr(vocabulary, 'resolved', vocabulary)   # data.vocab.LazyVocabulary
    self.vocab = v
    self.eos_id = int(v.eos_id) if v.eos_id is not None else None
    self.unk_id = getattr(v, 'unk_id', None)
    self.kind = ('sentencepiece' if hasattr(v, 'sp_model') and hasattr(v, 'tokenizer')
                 else 'bytes' if getattr(v, '_num_special_tokens', None) == 3
                 and getattr(v, '_byte_size', None) == 256 else 'other')
    self._pieces: dict[bytes, int] = {}
    self._bytes: dict[int, bytes] = {}
    if self.kind == 'sentencepiece':
      sp = v.tokenizer
      for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i):
          self._bytes[i] = b'' if not sp.is_unknown(i) else b'\xff'  # never valid UTF-8
          continue
        p = sp.id_to_piece(i)
        m = _BYTE_FALLBACK.match(p)
        b = bytes([int(m.group(1), 16)]) if m else p.replace('\u2581', ' ').encode('utf-8')
        self._bytes[i] = b
        self._pieces.setdefault(b, i)
    elif self.kind == 'bytes':
      for byte in range(256):
        self._bytes[byte + 3] = bytes([byte])
        self._pieces[bytes([byte])] = byte + 3

  def piece_bytes(self, i: int) -> bytes:
    """Bytes of student token `i` (b'' for pad / EOS / extra ids)."""
    i = int(i)
    if self.kind != 'other':
      return self._bytes.get(i, b'')
    if i == self.eos_id or i == 0:
      return b''
    return self.vocab.decode([i]).encode('utf-8')

  @functools.cached_property
  def _proper_prefixes(self) -> frozenset:
    return frozenset(b[:n] for b in self._pieces for n in range(1, len(b)))

  def extends(self, text: bytes) -> bool:
    """Whether some student piece is longer than `text` and starts with it."""
    if self.kind == 'bytes':
      return False
    return text in self._proper_prefixes

  @functools.cached_property
  def _no_dummy_prefix(self):
    """A SentencePiece processor that encodes mid-word text (no '▁' prefix)."""
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(self.vocab.sp_model)
    m.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    return sp

  @functools.lru_cache(maxsize=65536)
  def first_id(self, text: bytes) -> Optional[int]:
    """The student token `text` begins with: the exact piece when there is one,
    else the first id of the student's encoding (None: nothing / unknown)."""
    if text in self._pieces:
      return self._pieces[text]
    if not text:
      return None
    if self.kind == 'bytes':
      return text[0] + 3
    s = text.decode('utf-8', errors='ignore')
    if not s:
      return None
    if self.kind == 'sentencepiece':
      ids = (self.vocab.encode(s) if s[0].isspace()
             else self._no_dummy_prefix.encode_as_ids(s))
    else:
      ids = self.vocab.encode(s)
    ids = [i for i in ids if self.piece_bytes(i) != b'']  # a bare '▁' piece is b' '
    if not ids or ids[0] == self.unk_id:
      return None
    return int(ids[0])


@functools.lru_cache(maxsize=8)
def _student_vocab_cached(vocabulary: Any) -> StudentVocab:
  return StudentVocab(vocabulary)


def student_vocab(vocabulary: Any) -> StudentVocab:
  if isinstance(vocabulary, StudentVocab):
    return vocabulary
  try:
    return _student_vocab_cached(vocabulary)
  except TypeError:   # unhashable
    return StudentVocab(vocabulary)


# ------------------------------------------------------------------ alignment

@dataclasses.dataclass
class CarryStats:
  """What survived the carry (sums over student target tokens)."""
  positions: int = 0          # student target tokens
  aligned: int = 0            # one-to-one (weight 1)
  uld: int = 0                # non one-to-one rows given to the ULD loss
  zero: int = 0               # non one-to-one rows with weight 0
  teacher_mass: float = 0.0   # Σ teacher top-k probability on aligned rows
  carried_mass: float = 0.0   # ... of it mapped onto student tokens

  def add(self, other: 'CarryStats') -> 'CarryStats':
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
    return self

  def as_dict(self) -> dict[str, float]:
    d = dataclasses.asdict(self)
    d['aligned_share'] = self.aligned / self.positions if self.positions else 0.0
    d['carried_mass_share'] = (self.carried_mass / self.teacher_mass
                               if self.teacher_mass else 0.0)
    return d


def _offsets(pieces: Sequence[bytes]) -> np.ndarray:
  return np.concatenate([[0], np.cumsum([len(p) for p in pieces], dtype=np.int64)])


class _OffsetMap:
  """Student byte offsets → teacher byte offsets over matching blocks."""

  def __init__(self, s: bytes, t: bytes):
    if t[:len(s)] == s:
      self.blocks = [(0, 0, len(s))]
    else:
      sm = difflib.SequenceMatcher(None, s, t, autojunk=False)
      self.blocks = [(a, b, n) for a, b, n in sm.get_matching_blocks() if n]

  def span(self, a: int, b: int) -> Optional[tuple[int, int]]:
    """Teacher span of student bytes [a, b) when they lie in one matched block."""
    for sa, ta, n in self.blocks:
      if sa <= a and b <= sa + n and (a < sa + n or a == b == sa + n):
        return a - sa + ta, b - sa + ta
    return None

  def point(self, a: int) -> Optional[int]:
    """Teacher offset of a student boundary that ends (or starts) a matched block."""
    for sa, ta, n in self.blocks:
      if sa <= a <= sa + n:
        return a - sa + ta
    return None


def _merge(pairs: Iterable[tuple[Optional[int], float]], k: int
           ) -> tuple[np.ndarray, np.ndarray, float]:
  """Adds the probabilities of alternatives mapping to one student id; keeps
  the k largest in the order they first appear (the teacher's order, so equal
  tokenizations give its rows unchanged). (ids [k], lps [k], mass)."""
  acc: dict[int, list[float]] = {}
  for sid, lp in pairs:
    if sid is None or not lp > ABSENT_LOGPROB / 10:
      continue
    acc.setdefault(sid, []).append(lp)
  merged = [(sid, lps[0] if len(lps) == 1 else float(np.logaddexp.reduce(lps)))
            for sid, lps in acc.items()]
  order = sorted(sorted(range(len(merged)), key=lambda i: -merged[i][1])[:k])
  ids = np.zeros(k, np.int32)
  lps = np.full(k, ABSENT_LOGPROB, np.float32)
  for j, i in enumerate(order):
    ids[j], lps[j] = merged[i]
  mass = float(sum(math.exp(lp) for _, lp in merged)) if merged else 0.0
  return ids, lps, mass


def carry_topk_with_stats(
    student_vocab_: Any, student_target_ids: Sequence[int], teacher_tokens: Sequence[bytes],
    teacher_topk: Sequence[Sequence[tuple[bytes, float]]], *, k: int = 5,
    mismatch: str = 'zero', stop: Sequence[str] = (), teacher_eos: Sequence[bytes] = TEACHER_EOS,
    ambiguous: str = 'first',
) -> tuple[np.ndarray, np.ndarray, np.ndarray, CarryStats]:
  """`carry_topk` plus its `CarryStats`."""
  if mismatch not in MISMATCH_MODES:
    raise ValueError(f'mismatch={mismatch!r}: expected one of {MISMATCH_MODES}')
  if ambiguous not in AMBIGUOUS_MODES:
    raise ValueError(f'ambiguous={ambiguous!r}: expected one of {AMBIGUOUS_MODES}')
  if len(teacher_topk) != len(teacher_tokens):
    raise ValueError(f'{len(teacher_tokens)} teacher tokens but {len(teacher_topk)} top-k lists')
  sv = student_vocab(student_vocab_)
  ids = [int(i) for i in student_target_ids]
  s_pieces = [sv.piece_bytes(i) for i in ids]
  s_stream = b''.join(s_pieces)
  t_tokens = [bytes(t) for t in teacher_tokens]
  t_stream = b''.join(t_tokens)
  lead = int(s_stream[:1] == b' ' and t_stream[:1] != b' ')   # the student's dummy prefix
  s_off = np.maximum(_offsets(s_pieces) - lead, 0)
  s_text = s_stream[lead:]
  t_off = _offsets(t_tokens)
  starts: dict[int, list[int]] = {}
  for j in range(len(t_tokens)):
    starts.setdefault(int(t_off[j]), []).append(j)
  omap = _OffsetMap(s_text, t_stream)
  stops = tuple(s.encode('utf-8') for s in stop if s)
  eos_set = set(teacher_eos)

  L = len(ids)
  out_ids = np.zeros((L, k), np.int32)
  out_lps = np.full((L, k), ABSENT_LOGPROB, np.float32)
  weights = np.zeros(L, np.float32)
  st = CarryStats(positions=L)

  def to_student(alt: bytes, a: int) -> Optional[int]:
    if alt in eos_set or any(alt.startswith(s) for s in stops):
      return sv.eos_id   # the teacher would stop here
    kb = key(alt, a)
    if ambiguous == 'rest' and sv.extends(kb):
      return None
    return sv.first_id(kb)

  def key(alt: bytes, a: int) -> bytes:
    # At the completion's start a dropped dummy prefix gives word-initial pieces.
    if a == 0 and lead and alt[:1] not in (b' ', b'\n', b'\t'):
      return b' ' + alt
    return alt

  def put(i, pairs, teacher_row):
    row_ids, row_lps, mass = _merge(pairs, k)
    out_ids[i], out_lps[i], weights[i] = row_ids, row_lps, 1.0
    st.aligned += 1
    st.teacher_mass += float(sum(math.exp(lp) for _, lp in teacher_row if lp > ABSENT_LOGPROB))
    st.carried_mass += mass

  for i, sid in enumerate(ids):
    a, b = int(s_off[i]), int(s_off[i + 1])
    if sid == sv.eos_id:
      tend = omap.point(len(s_text)) if a == len(s_text) else None
      cand = starts.get(tend, []) if tend is not None else []
      if cand:
        j = cand[0]
        chosen = t_tokens[j]
        pairs = []
        for alt, lp in teacher_topk[j]:
          pairs.append((sv.eos_id, lp) if alt == chosen else (to_student(alt, a), lp))
        put(i, pairs, teacher_topk[j])
        continue
    elif b > a:
      span = omap.span(a, b)
      if span is not None:
        ta, tb = span
        js = [j for j in starts.get(ta, []) if int(t_off[j + 1]) == tb]
        if js:
          j = js[0]
          put(i, [(to_student(alt, a), lp) for alt, lp in teacher_topk[j]],
              teacher_topk[j])
          continue
    # Not one to one.
    if mismatch == 'uld' and b > a:
      ta = omap.point(a)
      j = None
      if ta is not None:
        js = [j for j in starts.get(ta, []) if t_off[j + 1] > ta]
        covering = np.nonzero((t_off[:-1] <= ta) & (t_off[1:] > ta))[0]
        j = js[0] if js else (int(covering[0]) if covering.size else None)
      if j is not None and teacher_topk[j]:
        lps = sorted((lp for _, lp in teacher_topk[j] if lp > ABSENT_LOGPROB / 10),
                     reverse=True)[:k]
        out_lps[i, :len(lps)] = lps
        weights[i] = 1.0
        st.uld += 1
        continue
    st.zero += 1
  return out_ids, out_lps, weights, st


def carry_topk(student_vocab: Any, student_target_ids: Sequence[int],
               teacher_tokens: Sequence[bytes],
               teacher_topk: Sequence[Sequence[tuple[bytes, float]]], *, k: int = 5,
               mismatch: str = 'zero', stop: Sequence[str] = (),
               teacher_eos: Sequence[bytes] = TEACHER_EOS, ambiguous: str = 'first'
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The teacher's top-k carried onto the student's vocabulary (module notes).

  Args:
    student_vocab: a `seqio.Vocabulary` (or `StudentVocab`).
    student_target_ids: [L] the student's tokenization of the completion text
      (EOS included when the student predicts it).
    teacher_tokens: the teacher's tokens as bytes (its EOS / special tokens as
      b'' or their literal text, e.g. b'</s>').
    teacher_topk: per teacher token, its alternatives as (bytes, log-prob).
    k: top-k kept per student token.
    mismatch: 'zero' (weight 0) or 'uld' (sorted teacher log-probs, ids 0) for
      positions that do not align one to one.
    stop: the stop sequences that may have cut the completion.
    teacher_eos: teacher tokens that mean end of sequence.
    ambiguous: 'first' or 'rest' for alternatives shorter than a student piece
      they begin (module notes).
  Returns:
    topk_ids [L, k] int32, topk_logprobs [L, k] float32 (absent entries id 0,
    log-prob −1e4), weights [L] float32 (1 aligned / ULD, 0 otherwise).
  """
  ids, lps, w, _ = carry_topk_with_stats(student_vocab, student_target_ids, teacher_tokens,
                                         teacher_topk, k=k, mismatch=mismatch, stop=stop,
                                         teacher_eos=teacher_eos, ambiguous=ambiguous)
  return ids, lps, w


def is_uld_row(topk_ids: np.ndarray, topk_logprobs: np.ndarray) -> np.ndarray:
  """bool [...]: rows `mismatch='uld'` wrote (all ids 0, some entry present)."""
  return np.all(topk_ids == 0, -1) & np.any(topk_logprobs > ABSENT_LOGPROB / 10, -1)


# ------------------------------------------------- compact raw teacher top-k

_RAW_MAGIC = b'XTK1'


def encode_teacher_topk(tokens: Sequence[bytes],
                        topk: Sequence[Sequence[tuple[bytes, float]]]) -> bytes:
  """The teacher's own tokens and top-k, compactly: a string table of the
  distinct token / alternative bytes, then uint16 (or uint32) indices
  [T] + [T, k] and float16 log-probs [T, k] (absent: index of b'' and −1e4).

  Layout: magic 'XTK1', uint32 n_strings, T, k, index width (2 | 4);
  uint32 [n_strings] lengths; the strings; token indices; alt indices; log-probs.
  """
  table: dict[bytes, int] = {b'': 0}
  intern = lambda b: table.setdefault(bytes(b), len(table))  # noqa: E731
  T = len(tokens)
  k = max((len(a) for a in topk), default=0)
  tok_idx = np.asarray([intern(t) for t in tokens], np.int64)
  alt_idx = np.zeros((T, k), np.int64)
  lps = np.full((T, k), ABSENT_LOGPROB, np.float32)
  for i, alts in enumerate(topk):
    for j, (a, lp) in enumerate(alts):
      alt_idx[i, j], lps[i, j] = intern(a), max(float(lp), ABSENT_LOGPROB)
  strings = list(table)
  width = 2 if len(strings) <= 65536 else 4
  dt = '<u2' if width == 2 else '<u4'
  header = np.asarray([len(strings), T, k, width], '<u4').tobytes()
  lengths = np.asarray([len(s) for s in strings], '<u4').tobytes()
  return b''.join([_RAW_MAGIC, header, lengths, *strings, tok_idx.astype(dt).tobytes(),
                   alt_idx.astype(dt).tobytes(), lps.astype('<f2').tobytes()])


def decode_teacher_topk(blob: bytes) -> tuple[list[bytes], list[list[tuple[bytes, float]]]]:
  """Inverse of `encode_teacher_topk` (absent alternatives dropped)."""
  if blob[:4] != _RAW_MAGIC:
    raise ValueError('not an encoded teacher top-k (magic XTK1 missing)')
  n, T, k, width = np.frombuffer(blob, '<u4', 4, 4).tolist()
  pos = 20
  lengths = np.frombuffer(blob, '<u4', n, pos).tolist()
  pos += 4 * n
  strings = []
  for ln in lengths:
    strings.append(bytes(blob[pos:pos + ln]))
    pos += ln
  dt = '<u2' if width == 2 else '<u4'
  tok_idx = np.frombuffer(blob, dt, T, pos)
  pos += width * T
  alt_idx = np.frombuffer(blob, dt, T * k, pos).reshape(T, k)
  pos += width * T * k
  lps = np.frombuffer(blob, '<f2', T * k, pos).reshape(T, k).astype(np.float32)
  tokens = [strings[i] for i in tok_idx]
  topk = [[(strings[a], float(lp)) for a, lp in zip(alt_idx[i], lps[i])
           if lp > ABSENT_LOGPROB / 10] for i in range(T)]
  return tokens, topk
