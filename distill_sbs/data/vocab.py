"""The project's vocabulary, selectable after `import distill_sbs.tasks`.

Selection, first match wins, resolved at the first *use* of the vocabulary:
  1. gin `get_vocabulary.spm_path = '/path/spiece.model'` (or the argument),
  2. gin `get_vocabulary.hf_tokenizer_path = '/path/checkpoint_dir'` (or the
     argument): the directory's `tokenizer.json` as an `HfTokenizerVocabulary`
     (`data/hf_vocab.py`; special ids from the checkpoint, extra_ids=0),
  3. `$DISTILL_SBS_SPM_PATH`,
  4. `$DISTILL_SBS_HF_TOKENIZER` (a checkpoint directory, or its tokenizer.json),
  5. `seqio.ByteVocabulary(extra_ids=100)` (vocab_size 359; offline default).
An argument beats both env vars; `spm_path` beats `hf_tokenizer_path` (so an
explicit `get_vocabulary(spm_path)` call, e.g. a T5 teacher's, still works while
gin binds `hf_tokenizer_path` for the student). Both env vars set (and no
argument) is a ValueError: the choice would be ambiguous.

Tasks are registered at import time with `DEFAULT_VOCABULARY`, a `LazyVocabulary`
that calls `get_vocabulary()` the first time any attribute is needed (reading
data, `vocab_size`, ...) and then delegates every call to that vocabulary. So
parse gin / set the env var before reading data; once resolved the choice is
fixed for the process (`reset_default_vocabulary()` re-opens it, for tests).
"""
from __future__ import annotations

import abc
import hashlib
import os
import threading
from typing import Optional

import gin
import seqio

from distill_sbs.data import hf_vocab

SPM_PATH_ENV = 'DISTILL_SBS_SPM_PATH'
HF_TOKENIZER_ENV = 'DISTILL_SBS_HF_TOKENIZER'
BYTE_EXTRA_IDS = 100


@gin.configurable
def get_vocabulary(spm_path: Optional[str] = None,
                   extra_ids: int = BYTE_EXTRA_IDS,
                   hf_tokenizer_path: Optional[str] = None) -> seqio.Vocabulary:
  """SentencePiece by path (T5's `spiece.model`: extra_ids=100), a Hugging Face
  `tokenizer.json` by checkpoint directory (`extra_ids` unused), else bytes."""
  if spm_path:
    hf_tokenizer_path = None
  elif not hf_tokenizer_path:
    spm_path = os.environ.get(SPM_PATH_ENV) or None
    hf_tokenizer_path = os.environ.get(HF_TOKENIZER_ENV) or None
    if spm_path and hf_tokenizer_path:
      raise ValueError(f'${SPM_PATH_ENV} and ${HF_TOKENIZER_ENV} are both set '
                       f'({spm_path!r}, {hf_tokenizer_path!r}); set one')
  if hf_tokenizer_path:
    path = os.path.expanduser(hf_tokenizer_path)
    where = (f'from get_vocabulary.hf_tokenizer_path (the decoder-only model gins\' '
             f'HF_TOKENIZER_PATH, in the real-size gins INITIAL_CHECKPOINT_PATH by default) '
             f'or ${HF_TOKENIZER_ENV}')
    if not os.path.exists(path):
      raise FileNotFoundError(f'Hugging Face tokenizer directory not found: {path!r} '
                              f'({where})')
    if os.path.isdir(path) and not os.path.isfile(
        os.path.join(path, hf_vocab.TOKENIZER_FILE)):
      raise FileNotFoundError(
          f'{path!r} has no {hf_vocab.TOKENIZER_FILE} ({where}); a run directory or T5X '
          'checkpoint brings no tokenizer: set HF_TOKENIZER_PATH to the Hugging Face '
          'checkpoint directory the model started from')
    return hf_vocab.HfTokenizerVocabulary(path)
  if spm_path:
    path = os.path.expanduser(spm_path)
    if not os.path.exists(path):
      raise FileNotFoundError(f'SentencePiece model not found: {path!r} '
                              f'(from get_vocabulary.spm_path or ${SPM_PATH_ENV})')
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
  return seqio.ByteVocabulary(extra_ids=extra_ids)


def file_hash(path: str) -> str:
  """sha256 hex of a file (e.g. a teacher's `spiece.model`)."""
  with open(os.path.expanduser(path), 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def vocab_hash(vocabulary: seqio.Vocabulary) -> str:
  """sha256 hex of the SentencePiece model file, or of a Hugging Face
  `tokenizer.json`; for byte vocabularies the sha256 of
  'seqio.ByteVocabulary(extra_ids=N)'."""
  if isinstance(vocabulary, LazyVocabulary):
    vocabulary = vocabulary.resolved
  if isinstance(vocabulary, hf_vocab.HfTokenizerVocabulary):
    return vocabulary.sha256
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    path = vocabulary.sentencepiece_model_file
    if path and os.path.exists(path):
      return file_hash(path)
    return hashlib.sha256(vocabulary.sp_model).hexdigest()
  if isinstance(vocabulary, seqio.ByteVocabulary):
    desc = f'seqio.ByteVocabulary(extra_ids={vocabulary.extra_ids})'
    return hashlib.sha256(desc.encode('utf-8')).hexdigest()
  raise TypeError(f'vocab_hash: unsupported vocabulary {type(vocabulary).__name__}')


# The seqio.Vocabulary interface `LazyVocabulary` forwards to the resolved vocabulary.
# `eos_ids` only where the resolved vocabulary has it (HfTokenizerVocabulary).
_DELEGATED_PROPERTIES = ('bos_id', 'eos_id', 'pad_id', 'unk_id', 'extra_ids', 'vocab_size',
                         '_base_vocab_size', 'eos_ids')
_DELEGATED_METHODS = ('_encode', '_decode', '_encode_tf', '_decode_tf', 'encode', 'decode',
                      'encode_tf', 'decode_tf')


def _delegating(cls):
  """Gives `cls` the delegated properties and methods (forwarding to
  `self.resolved`) and recomputes its abstract methods."""
  for name in _DELEGATED_PROPERTIES:
    setattr(cls, name, property(lambda self, n=name: getattr(self.resolved, n)))
  for name in _DELEGATED_METHODS:
    setattr(cls, name, lambda self, arg, n=name: getattr(self.resolved, n)(arg))
  return abc.update_abstractmethods(cls)


@_delegating
class LazyVocabulary(seqio.Vocabulary):
  """Delegates to `get_vocabulary()` (or `factory`), resolved on first use."""

  def __init__(self, factory=None):
    super().__init__(extra_ids=0)
    self._factory = factory or get_vocabulary
    self._vocab: Optional[seqio.Vocabulary] = None
    self._lock = threading.Lock()

  @property
  def resolved(self) -> seqio.Vocabulary:
    if self._vocab is None:
      with self._lock:
        if self._vocab is None:
          self._vocab = self._factory()
    return self._vocab

  def __getstate__(self):
    return {'_factory': self._factory, '_vocab': self._vocab, '_extra_ids': 0}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def reset(self) -> None:
    with self._lock:
      self._vocab = None

  def __eq__(self, other):
    if isinstance(other, LazyVocabulary):
      return self is other or self.resolved == other.resolved
    return self.resolved == other

  def __hash__(self):
    return id(self)

  def __str__(self):
    state = str(self._vocab) if self._vocab is not None else 'unresolved'
    return f'LazyVocabulary({state})'


DEFAULT_VOCABULARY = LazyVocabulary()


def default_vocabulary() -> LazyVocabulary:
  """The process-wide vocabulary every `distill_sbs.tasks` task uses."""
  return DEFAULT_VOCABULARY


def reset_default_vocabulary() -> None:
  """Forget the resolved choice (tests, or re-selection before data is read)."""
  DEFAULT_VOCABULARY.reset()
