"""A Hugging Face `tokenizer.json` as a seqio vocabulary: ids from the checkpoint,
id 0 an ordinary token, tf.data tokenization, selection through `vocab.py`."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from distill_sbs.data import hf_vocab, vocab

TEXTS = ['the answer is entailment', 'so the answer is yes!', 'hello world, premise',
         'a man is sleeping on the couch']
SPECIALS = ['<|endoftext|>', '<s>', '<pad>', '<|eot|>']
TEXT = 'Hi! the answer is yes!'  # '!' is id 0


def _train(texts) -> Tokenizer:
  """Byte-level BPE; specials added after training, so they have the last ids and
  id 0 is the first byte character ('!')."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts * 10, trainer)
  tok.add_special_tokens(SPECIALS)
  return tok


@pytest.fixture(scope='module')
def tok_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('tok') / 'tokenizer.json'
  _train(TEXTS).save(str(path))
  return path


@pytest.fixture(scope='module')
def ids(tok_file):
  tok = Tokenizer.from_file(str(tok_file))
  return {t: tok.token_to_id(t) for t in SPECIALS}


def _ckpt(tmp_path, tok_file, name='ckpt', **files):
  """A checkpoint dir: tokenizer.json plus `config=...`, `generation_config=...`,
  `tokenizer_config=...` JSON files."""
  d = tmp_path / name
  d.mkdir()
  shutil.copy(tok_file, d / 'tokenizer.json')
  for fname, data in files.items():
    (d / f'{fname}.json').write_text(json.dumps(data))
  return d


@pytest.fixture
def ckpt(tmp_path, tok_file, ids):
  return _ckpt(tmp_path, tok_file, config={
      'model_type': 'qwen2', 'pad_token_id': ids['<pad>'],
      'eos_token_id': ids['<|endoftext|>'], 'bos_token_id': ids['<s>']})


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
  monkeypatch.delenv(vocab.SPM_PATH_ENV, raising=False)
  monkeypatch.delenv(vocab.HF_TOKENIZER_ENV, raising=False)
  gin.clear_config()
  vocab.reset_default_vocabulary()
  yield
  gin.clear_config()
  vocab.reset_default_vocabulary()


def test_round_trip_keeps_id_zero(ckpt, tok_file, ids):
  v = hf_vocab.HfTokenizerVocabulary(str(ckpt))
  assert Tokenizer.from_file(str(tok_file)).id_to_token(0) == '!'
  size = Tokenizer.from_file(str(tok_file)).get_vocab_size(with_added_tokens=True)
  assert v.vocab_size == v._base_vocab_size == size == ids['<|eot|>'] + 1
  assert v.extra_ids == 0
  enc = list(v.encode(TEXT))
  assert enc.count(0) == 2 and enc[2] == 0  # 'H', 'i', '!'
  assert v.decode(enc) == TEXT
  assert v.decode([0, 0] + enc) == '!!' + TEXT
  # Decoding stops at EOS; pad ids after it are dropped with it.
  assert v.decode(enc + [v.eos_id, v.pad_id, 0]) == TEXT
  assert v.decode(np.asarray(enc + [v.eos_id], np.int32)) == TEXT
  # No special token added by encode (seqio appends EOS itself).
  assert ids['<s>'] not in enc and ids['<|endoftext|>'] not in enc


def test_special_ids_from_config(ckpt, ids):
  v = hf_vocab.HfTokenizerVocabulary(str(ckpt))
  assert v.pad_id == ids['<pad>'] != 0
  assert v.eos_id == ids['<|endoftext|>'] and v.eos_ids == (v.eos_id,)
  assert v.bos_id == ids['<s>']
  assert v.unk_id is None  # byte-level BPE: no unk token
  assert v.id_sources['eos'].endswith('config.json')


def test_eos_list_and_pad_falls_back_to_eos(tmp_path, tok_file, ids):
  eos = [ids['<|endoftext|>'], ids['<|eot|>']]
  d = _ckpt(tmp_path, tok_file, config={'eos_token_id': eos, 'bos_token_id': None})
  v = hf_vocab.HfTokenizerVocabulary(str(d))
  assert v.eos_id == eos[0] and v.eos_ids == tuple(eos)
  assert v.pad_id == eos[0] and 'eos as pad' in v.id_sources['pad']
  assert v.bos_id is None
  enc = list(v.encode(TEXT))
  assert v.decode(enc + [eos[1], 5, 6]) == TEXT  # any EOS of the list ends the text


def test_fallback_files(tmp_path, tok_file, ids):
  # config.json without ids -> generation_config.json -> tokenizer_config.json.
  d = _ckpt(tmp_path, tok_file, config={'model_type': 'llama'},
            generation_config={'eos_token_id': [ids['<|eot|>'], ids['<|endoftext|>']],
                               'bos_token_id': ids['<s>']},
            tokenizer_config={'pad_token': {'content': '<pad>', 'special': True},
                              'eos_token': '<|endoftext|>', 'bos_token': '<|eot|>',
                              'unk_token': '<|eot|>'})
  v = hf_vocab.HfTokenizerVocabulary(str(d))
  assert v.eos_ids == (ids['<|eot|>'], ids['<|endoftext|>'])
  assert v.bos_id == ids['<s>']  # generation_config before tokenizer_config
  assert v.pad_id == ids['<pad>'] and v.id_sources['pad'].endswith('tokenizer_config.json')
  assert v.unk_id == ids['<|eot|>']
  # config.json wins over both; text_config (Gemma 3) counts as config.json.
  d2 = _ckpt(tmp_path, tok_file, name='c2',
             config={'text_config': {'eos_token_id': ids['<s>']}},
             generation_config={'eos_token_id': ids['<|eot|>']})
  assert hf_vocab.HfTokenizerVocabulary(str(d2)).eos_id == ids['<s>']
  # Only tokenizer_config.json, and the tokenizer.json file path itself.
  d3 = _ckpt(tmp_path, tok_file, name='c3', tokenizer_config={'eos_token': '<|endoftext|>'})
  v3 = hf_vocab.HfTokenizerVocabulary(str(d3 / 'tokenizer.json'))
  assert v3.eos_id == v3.pad_id == ids['<|endoftext|>'] and v3.path == str(d3)


def test_errors(tmp_path, tok_file, ids):
  with pytest.raises(FileNotFoundError, match=r'empty.*tokenizer\.json'):
    (tmp_path / 'empty').mkdir()
    hf_vocab.HfTokenizerVocabulary(str(tmp_path / 'empty'))
  d = _ckpt(tmp_path, tok_file, name='big', config={'eos_token_id': [ids['<s>'], 100000]})
  with pytest.raises(ValueError, match=r'config\.json: eos_token_id=.*out of range'):
    hf_vocab.HfTokenizerVocabulary(str(d))
  d = _ckpt(tmp_path, tok_file, name='neg', generation_config={'pad_token_id': -1,
                                                              'eos_token_id': 3})
  with pytest.raises(ValueError, match=r'generation_config\.json: pad_token_id=-1'):
    hf_vocab.HfTokenizerVocabulary(str(d))
  d = _ckpt(tmp_path, tok_file, name='unknown', tokenizer_config={'eos_token': '</s>'})
  with pytest.raises(ValueError, match=r"tokenizer_config\.json: eos_token='</s>' is not a token"):
    hf_vocab.HfTokenizerVocabulary(str(d))
  d = _ckpt(tmp_path, tok_file, name='none', config={'model_type': 'llama'})
  with pytest.raises(ValueError, match='no pad_token_id nor eos_token_id'):
    hf_vocab.HfTokenizerVocabulary(str(d))
  # The constructor's ids override (and are range checked too).
  assert hf_vocab.HfTokenizerVocabulary(str(d), eos_id=ids['<s>']).pad_id == ids['<s>']
  with pytest.raises(ValueError, match='constructor: pad_id=999'):
    hf_vocab.HfTokenizerVocabulary(str(d), eos_id=1, pad_id=999)


def test_encode_tf_in_tf_data(ckpt):
  v = hf_vocab.HfTokenizerVocabulary(str(ckpt))
  texts = [TEXT, 'hello world', '', 'premise: a man!']
  ds = tf.data.Dataset.from_tensor_slices({'targets': texts, 'idx': list(range(4))})
  feats = {'targets': seqio.Feature(v, add_eos=True)}
  out = list(seqio.preprocessors.tokenize(ds, feats).as_numpy_iterator())
  for ex, text in zip(out, texts):
    assert ex['targets'].dtype == np.int32
    assert ex['targets'].tolist() == list(v.encode(text))
    assert ex['targets_pretokenized'].decode() == text
  eos_out = list(seqio.preprocessors.tokenize(ds, feats, with_eos=True).as_numpy_iterator())
  assert [e['targets'].tolist() for e in eos_out] == [
      list(v.encode(t)) + [v.eos_id] for t in texts]
  # Shapes are known statically inside the graph.
  spec = seqio.preprocessors.tokenize(ds, feats).element_spec['targets']
  assert spec.shape.as_list() == [None] and spec.dtype == tf.int32
  # A batch of strings -> ragged ids; decode_tf of padded rows -> strings.
  rag = v.encode_tf(tf.constant(texts))
  assert rag.to_list() == [list(v.encode(t)) for t in texts]
  padded = rag.to_tensor(default_value=v.pad_id)
  padded = tf.concat([padded, tf.fill([4, 1], v.eos_id)], axis=1)
  assert [s.decode() for s in v.decode_tf(padded).numpy()] == [
      v.decode(r) for r in padded.numpy()]
  assert v.decode_tf(tf.constant(v.encode(TEXT))).numpy().decode() == TEXT


def test_hash_equality_pickle(tmp_path, ckpt, tok_file, ids):
  v = hf_vocab.HfTokenizerVocabulary(str(ckpt))
  again = hf_vocab.HfTokenizerVocabulary(str(ckpt))
  digest = hashlib.sha256((ckpt / 'tokenizer.json').read_bytes()).hexdigest()
  assert vocab.vocab_hash(v) == vocab.vocab_hash(again) == v.sha256 == digest
  assert v == again and hash(v) == hash(again)
  other_file = tmp_path / 'other.json'
  _train(['completely different words here', 'zebra xylophone quartz']).save(str(other_file))
  other = hf_vocab.HfTokenizerVocabulary(
      str(_ckpt(tmp_path, other_file, name='other',
                config={'eos_token_id': ids['<|endoftext|>']})))
  assert vocab.vocab_hash(other) != vocab.vocab_hash(v) and other != v
  assert v != seqio.ByteVocabulary()
  restored = pickle.loads(pickle.dumps(v))
  assert restored == v and list(restored.encode(TEXT)) == list(v.encode(TEXT))


def test_get_vocabulary_gin_and_env(monkeypatch, ckpt, ids):
  gin.parse_config(f"get_vocabulary.hf_tokenizer_path = '{ckpt}'")
  v = vocab.get_vocabulary()
  assert isinstance(v, hf_vocab.HfTokenizerVocabulary) and v.pad_id == ids['<pad>']
  lazy = vocab.DEFAULT_VOCABULARY
  assert lazy.pad_id == ids['<pad>'] and lazy.eos_ids == (ids['<|endoftext|>'],)
  assert lazy.bos_id == ids['<s>'] and lazy.vocab_size == v.vocab_size
  assert lazy == v and vocab.vocab_hash(lazy) == v.sha256
  assert lazy.decode(list(lazy.encode(TEXT)) + [lazy.eos_id, 7]) == TEXT
  assert lazy.encode_tf(tf.constant(TEXT)).numpy().tolist() == list(v.encode(TEXT))
  gin.clear_config()
  vocab.reset_default_vocabulary()
  # The env var: a directory, or its tokenizer.json.
  for path in (ckpt, ckpt / 'tokenizer.json'):
    monkeypatch.setenv(vocab.HF_TOKENIZER_ENV, str(path))
    vocab.reset_default_vocabulary()
    assert vocab.DEFAULT_VOCABULARY.eos_id == ids['<|endoftext|>']
    assert vocab.vocab_hash(vocab.DEFAULT_VOCABULARY) == v.sha256
  # An argument beats the env vars, spm_path beats hf_tokenizer_path; both env
  # vars at once are ambiguous.
  assert isinstance(vocab.get_vocabulary(spm_path=None), hf_vocab.HfTokenizerVocabulary)
  monkeypatch.setenv(vocab.SPM_PATH_ENV, '/x/spiece.model')
  with pytest.raises(ValueError, match='both set'):
    vocab.get_vocabulary()
  assert vocab.get_vocabulary(hf_tokenizer_path=str(ckpt)) == v
  with pytest.raises(FileNotFoundError, match='SentencePiece'):
    vocab.get_vocabulary(spm_path='/x/spiece.model', hf_tokenizer_path=str(ckpt))
  monkeypatch.delenv(vocab.SPM_PATH_ENV)
  monkeypatch.setenv(vocab.HF_TOKENIZER_ENV, str(ckpt / 'missing'))
  with pytest.raises(FileNotFoundError, match=vocab.HF_TOKENIZER_ENV):
    vocab.get_vocabulary()


def test_load_hf_vocabulary(tmp_path, ckpt):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  assert isinstance(hf_vocab.load_hf_vocabulary(str(ckpt)), hf_vocab.HfTokenizerVocabulary)
  t5 = tmp_path / 't5'
  t5.mkdir()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TEXTS * 20), model_prefix=str(t5 / 'spiece'), vocab_size=30,
      model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      character_coverage=1.0, minloglevel=2)
  sp = hf_vocab.load_hf_vocabulary(str(t5))
  assert isinstance(sp, seqio.SentencePieceVocabulary) and sp.vocab_size == 130
  with pytest.raises(FileNotFoundError, match='tokenizer.json'):
    hf_vocab.load_hf_vocabulary(str(tmp_path))


def test_parity_with_transformers(ckpt):
  transformers = pytest.importorskip('transformers')
  v = hf_vocab.HfTokenizerVocabulary(str(ckpt))
  hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(ckpt / 'tokenizer.json'))
  for text in TEXTS + [TEXT, 'x<|endoftext|>y !!', '']:
    ids = hf.encode(text, add_special_tokens=False)
    assert list(v.encode(text)) == ids
    # seqio decoding ends at EOS; HF renders it and goes on.
    upto = ids[:ids.index(v.eos_id)] if v.eos_id in ids else ids
    assert v.decode(ids) == hf.decode(upto, skip_special_tokens=False)
  assert hf.convert_ids_to_tokens(0) == '!'
