"""Vocabulary selection: bytes by default, SentencePiece by gin / env, lazily."""
import hashlib

import gin
import pytest
import seqio
import sentencepiece as spm
import tensorflow as tf

from distill_sbs.data import vocab


@pytest.fixture(scope='module')
def spm_path(tmp_path_factory):
  d = tmp_path_factory.mktemp('spm')
  text = ['the answer is entailment', 'premise and hypothesis', 'so the answer is',
          'a man is sleeping on the couch', 'how many apples does tom have'] * 20
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(text), model_prefix=str(d / 'tiny'), vocab_size=32,
      model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      character_coverage=1.0, minloglevel=2)
  return str(d / 'tiny.model')


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
  monkeypatch.delenv(vocab.SPM_PATH_ENV, raising=False)
  gin.clear_config()
  vocab.reset_default_vocabulary()
  yield
  gin.clear_config()
  vocab.reset_default_vocabulary()


def test_default_is_byte_vocabulary():
  v = vocab.get_vocabulary()
  assert isinstance(v, seqio.ByteVocabulary)
  assert v.vocab_size == 359 and v.extra_ids == 100
  assert vocab.DEFAULT_VOCABULARY.vocab_size == 359
  assert list(vocab.DEFAULT_VOCABULARY.encode('hi')) == [107, 108]
  assert vocab.vocab_hash(v) == hashlib.sha256(
      b'seqio.ByteVocabulary(extra_ids=100)').hexdigest()


def test_env_selects_spm_at_first_use(monkeypatch, spm_path):
  lazy = vocab.DEFAULT_VOCABULARY  # created at import, before the env is set
  monkeypatch.setenv(vocab.SPM_PATH_ENV, spm_path)
  ref = seqio.SentencePieceVocabulary(spm_path, extra_ids=100)
  assert lazy.vocab_size == ref.vocab_size == 132
  assert list(lazy.encode('the answer')) == list(ref.encode('the answer'))
  ids = lazy.encode_tf(tf.constant('so the answer is')).numpy().tolist()
  assert ids == list(ref.encode('so the answer is'))
  assert lazy.decode(ids) == 'so the answer is'
  assert lazy.eos_id == 1 and lazy.pad_id == 0 and lazy.unk_id == 2
  assert lazy == ref
  with open(spm_path, 'rb') as f:
    assert vocab.vocab_hash(lazy) == hashlib.sha256(f.read()).hexdigest()
  # Resolved once: a later env change does not switch it mid-run...
  monkeypatch.delenv(vocab.SPM_PATH_ENV)
  assert lazy.vocab_size == 132
  # ...until reset.
  vocab.reset_default_vocabulary()
  assert lazy.vocab_size == 359


def test_gin_selects_spm(spm_path):
  gin.parse_config(f"get_vocabulary.spm_path = '{spm_path}'")
  assert isinstance(vocab.DEFAULT_VOCABULARY.resolved, seqio.SentencePieceVocabulary)
  assert vocab.DEFAULT_VOCABULARY.vocab_size == 132


def test_missing_spm_path_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.model'):
    vocab.get_vocabulary(str(tmp_path / 'nope.model'))


def test_pickles(spm_path):
  import functools
  import pickle
  v = vocab.LazyVocabulary(functools.partial(vocab.get_vocabulary, spm_path))
  assert v.vocab_size == 132
  assert pickle.loads(pickle.dumps(v)).vocab_size == 132
