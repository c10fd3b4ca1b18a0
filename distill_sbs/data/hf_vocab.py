"""A Hugging Face checkpoint's `tokenizer.json` as a `seqio.Vocabulary`.

`HfTokenizerVocabulary(path)` reads `<path>/tokenizer.json` through the
`tokenizers` package (`path` may also be the `tokenizer.json` file itself; the
other files are then read from its directory). Its special ids come from the
checkpoint, per id the first file that names it:
  1. `config.json`: `pad_token_id`, `eos_token_id` (an int or a list),
     `bos_token_id` (also under `text_config`, as Gemma 3 writes them),
  2. `generation_config.json`: the same fields,
  3. `tokenizer_config.json`: `pad_token`, `eos_token`, `bos_token`, `unk_token`
     (token strings, or `{"content": ...}`), looked up in the tokenizer.
`unk_id` also falls back to the tokenizer model's `unk_token` (None if it has
none, as byte-level BPE vocabularies usually do). Without a pad id the EOS id is
the pad id, as Hugging Face generation does. Id 0 is an ordinary token here: it
is never padding unless the checkpoint says so, and decoding keeps it.

`load_hf_vocabulary(path)` is the vocabulary of any checkpoint directory:
SentencePiece for T5 directories (`spiece.model`, `models.load_vocabulary`),
else this class (`distill_sbs.models` may not import `data`, so the dispatch
lives here).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

TOKENIZER_FILE = 'tokenizer.json'
# The files special ids are read from, in order of precedence.
ID_FILES = ('config.json', 'generation_config.json', 'tokenizer_config.json')
_NAMES = ('pad', 'eos', 'bos', 'unk')


def _resolve_paths(path: str) -> tuple[str, str]:
  """(checkpoint directory, tokenizer.json path) of a directory or a file."""
  path = os.path.expanduser(os.fspath(path))
  if os.path.isfile(path):
    return os.path.dirname(os.path.abspath(path)), path
  file = os.path.join(path, TOKENIZER_FILE)
  if not os.path.isfile(file):
    raise FileNotFoundError(f'Hugging Face tokenizer not found: {file!r} (expected a '
                            f'checkpoint directory holding {TOKENIZER_FILE})')
  return path, file


def _read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: invalid JSON: {e}') from e
  if not isinstance(data, dict):
    raise ValueError(f'{path}: not a JSON object')
  return data


class HfTokenizerVocabulary(seqio.Vocabulary):
  """`tokenizer.json` of a Hugging Face checkpoint (`extra_ids=0`).

  Encoding adds no special tokens (`add_special_tokens=False`; seqio appends
  EOS). Decoding keeps every id (id 0 included, special tokens rendered) and
  stops at the first of `eos_ids`. `pad_id` is the checkpoint's pad id, or its
  EOS id when it has none. The keyword arguments override what the checkpoint
  says. Equal vocabularies have the same `tokenizer.json` bytes (`sha256`) and
  the same special ids.
  """

  def __init__(self, path: str, *, pad_id: Optional[int] = None,
               eos_id: Optional[int | Sequence[int]] = None,
               bos_id: Optional[int] = None, unk_id: Optional[int] = None):
    super().__init__(extra_ids=0)
    self._dir, self._file = _resolve_paths(path)
    with open(self._file, 'rb') as f:
      raw = f.read()
    self._sha256 = hashlib.sha256(raw).hexdigest()
    self._tokenizer = tokenizers.Tokenizer.from_str(raw.decode('utf-8'))
    self._tokenizer.no_padding()
    self._tokenizer.no_truncation()
    self._size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    given = {'pad': pad_id, 'eos': eos_id, 'bos': bos_id, 'unk': unk_id}
    ids, sources, model = {}, {}, json.loads(raw).get('model') or {}
    for name in _NAMES:
      if given[name] is not None:
        ids[name] = self._check(given[name], 'constructor', f'{name}_id')
        sources[name] = 'constructor'
      else:
        ids[name], sources[name] = self._from_files(name, model)
    if ids['pad'] is None:
      if ids['eos'] is None:
        raise ValueError(f'{self._dir}: no pad_token_id nor eos_token_id in '
                         f'{", ".join(ID_FILES)}; pass pad_id= or eos_id=')
      ids['pad'], sources['pad'] = ids['eos'][0], sources['eos'] + ' (eos as pad)'
    self._pad_id = ids['pad']
    self._eos_ids = tuple(ids['eos'] or ())
    self._bos_id, self._unk_id = ids['bos'], ids['unk']
    self.id_sources = sources  # where each special id came from, for messages

  # --- special ids -------------------------------------------------------------

  def _check(self, value: Any, where: str, field: str):
    """The id(s) of `value` (int or, for eos, a non-empty list), range checked;
    a tuple for eos."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or (len(values) > 1 and not field.startswith('eos')):
      raise ValueError(f'{where}: {field}={value!r} is not a token id')
    for v in values:
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f'{where}: {field}={value!r} is not a token id')
      if not 0 <= v < self._size:
        raise ValueError(f'{where}: {field}={value!r} is out of range for '
                         f'{self._file} ({self._size} tokens)')
    out = tuple(int(v) for v in values)
    return out if field.startswith('eos') else out[0]

  def _token_id(self, token: Any, where: str, field: str):
    if isinstance(token, dict):
      token = token.get('content')
    if not isinstance(token, str):
      raise ValueError(f'{where}: {field}={token!r} is not a token string')
    tid = self._tokenizer.token_to_id(token)
    if tid is None:
      raise ValueError(f'{where}: {field}={token!r} is not a token of {self._file}')
    return self._check(tid, where, field)

  def _from_files(self, name: str, model: dict):
    """(id or None, source file) of one special id; eos as a tuple."""
    for fname in ID_FILES:
      where = os.path.join(self._dir, fname)
      data = _read_json(where)
      if data is None:
        continue
      if fname == 'tokenizer_config.json':
        value = data.get(f'{name}_token')
        if value is not None:
          return self._token_id(value, where, f'{name}_token'), where
        continue
      field = f'{name}_token_id'
      value = data.get(field)
      if value is None and isinstance(data.get('text_config'), dict):
        value = data['text_config'].get(field)
      if value is not None and value != []:
        return self._check(value, where, field), where
    if name == 'unk':
      token = model.get('unk_token')
      if token is not None:
        return self._token_id(token, self._file, 'model.unk_token'), self._file
    return None, None

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def eos_id(self) -> Optional[int]:
    return self._eos_ids[0] if self._eos_ids else None

  @property
  def eos_ids(self) -> tuple[int, ...]:
    """Every EOS id of the checkpoint (`eos_token_id` may be a list)."""
    return self._eos_ids

  @property
  def bos_id(self) -> Optional[int]:
    return self._bos_id

  @property
  def unk_id(self) -> Optional[int]:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return self._tokenizer

  @property
  def path(self) -> str:
    """The checkpoint directory."""
    return self._dir

  @property
  def tokenizer_file(self) -> str:
    return self._file

  @property
  def sha256(self) -> str:
    """sha256 hex of the `tokenizer.json` bytes (`vocab.vocab_hash`)."""
    return self._sha256

  # --- encode / decode -----------------------------------------------------------

  def _encode(self, s) -> list[int]:
    if isinstance(s, bytes):
      s = s.decode('utf-8')
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    cut = [ids.index(e) for e in self._eos_ids if e in ids]
    if cut:
      ids = ids[:min(cut)]
    return self._tokenizer.decode(ids, skip_special_tokens=False)

  def _encode_np(self, s) -> np.ndarray:
    if isinstance(s, np.ndarray):
      s = s.item()
    return np.asarray(self._encode(s), np.int32)

  def _encode_batch_np(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    texts = [t.decode('utf-8') if isinstance(t, bytes) else t for t in s.tolist()]
    encs = self._tokenizer.encode_batch(texts, add_special_tokens=False)
    lengths = np.asarray([len(e.ids) for e in encs], np.int64)
    values = np.asarray([i for e in encs for i in e.ids], np.int32)
    return values, lengths

  def _decode_np(self, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    rows = ids.reshape(-1, ids.shape[-1]) if ids.size else np.zeros(
        (int(np.prod(ids.shape[:-1])), 0), ids.dtype)
    out = np.empty(len(rows), dtype=object)
    for k, row in enumerate(rows):
      out[k] = self._decode(row).encode('utf-8')
    return out.reshape(ids.shape[:-1])

  def _encode_tf(self, s) -> tf.Tensor | tf.RaggedTensor:
    """A string scalar -> int32 [n]; a string vector -> int32 ragged [b, None]."""
    s = tf.convert_to_tensor(s, dtype=tf.string)
    if s.shape.rank == 0:
      ids = tf.numpy_function(self._encode_np, [s], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids
    if s.shape.rank == 1:
      values, lengths = tf.numpy_function(self._encode_batch_np, [s],
                                          [tf.int32, tf.int64], stateful=False)
      values.set_shape([None])
      lengths.set_shape(s.shape)
      return tf.RaggedTensor.from_row_lengths(values, lengths)
    raise ValueError(f'HfTokenizerVocabulary.encode_tf: string scalar or vector '
                     f'expected, got shape {s.shape}')

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int [..., n] -> string [...] (each row through its first EOS)."""
    ids = tf.convert_to_tensor(ids)
    out = tf.numpy_function(self._decode_np, [ids], tf.string, stateful=False)
    if ids.shape.rank is not None:
      out.set_shape(ids.shape[:-1])
    return out

  # --- identity ------------------------------------------------------------------

  def __eq__(self, other):
    if not isinstance(other, HfTokenizerVocabulary):
      return NotImplemented
    return (self._sha256 == other._sha256 and self._pad_id == other._pad_id
            and self._eos_ids == other._eos_ids and self._bos_id == other._bos_id
            and self._unk_id == other._unk_id)

  def __hash__(self):
    return hash(self._sha256)

  def __str__(self):
    return (f'HfTokenizerVocabulary({self._dir!r}, vocab_size={self._size}, '
            f'pad_id={self._pad_id}, eos_ids={self._eos_ids}, bos_id={self._bos_id})')

  __repr__ = __str__


def load_hf_vocabulary(path: str) -> seqio.Vocabulary:
  """The vocabulary of a Hugging Face checkpoint directory: SentencePiece for T5
  (`spiece.model`, through `models.load_vocabulary`), else `tokenizer.json` as
  an `HfTokenizerVocabulary` (FileNotFoundError when it has neither)."""
  from distill_sbs.models import hf_io  # pylint: disable=g-import-not-at-top
  path = os.path.expanduser(os.fspath(path))
  spm = hf_io.load_vocabulary(path) if os.path.isdir(path) else None
  return spm if spm is not None else HfTokenizerVocabulary(path)
