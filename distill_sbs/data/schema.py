"""The one record schema every training example is stored in (TFRecord shards).

Text fields (always present, possibly empty):
  id, inputs, label (gold), llm_label, rationale, llm_output (raw teacher text).
Optional teacher fields (filled by the teacher / FIRST pipeline):
  teacher_topk_field     which text field the top-k is aligned to (e.g. 'llm_output')
  teacher_target_ids     int64 [L]      teacher tokenization of that field (with EOS)
  teacher_topk_k         int64          k
  teacher_topk_ids       bytes          [L, k] little-endian uint16 (or uint32, see
                                        teacher_topk_id_dtype)
  teacher_topk_logprobs  bytes          [L, k] little-endian float16 log-probs
  teacher_topk_id_dtype  bytes          'uint16' | 'uint32'
  teacher_vocab_hash     bytes          sha256 of the teacher's SentencePiece model
                                        (cross-tokenizer: of the student's, which the
                                        carried ids index)
  teacher_tokens_raw     bytes          the teacher's own tokens and top-k in its
                                        tokenizer (`cross_tokenizer.encode_teacher_topk`)
  vote_share             float          self-consistency vote share (1.0 when n=1)
"""
from __future__ import annotations

import os
import uuid
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import tensorflow as tf

TEXT_FIELDS = ('id', 'inputs', 'label', 'llm_label', 'rationale', 'llm_output')
TOPK_FIELDS = ('teacher_topk_field', 'teacher_target_ids', 'teacher_topk_k',
               'teacher_topk_ids', 'teacher_topk_logprobs',
               'teacher_topk_id_dtype', 'teacher_vocab_hash')
_BYTES_OPTIONAL = ('teacher_topk_field', 'teacher_topk_ids',
                   'teacher_topk_logprobs', 'teacher_topk_id_dtype',
                   'teacher_vocab_hash', 'teacher_tokens_raw')
_RAW_BYTES = ('teacher_topk_ids', 'teacher_topk_logprobs', 'teacher_tokens_raw')


def feature_description() -> dict[str, Any]:
  """`tf.io.parse_single_example` spec; optional fields default to empty."""
  desc = {f: tf.io.FixedLenFeature([], tf.string, default_value='')
          for f in TEXT_FIELDS}
  for f in _BYTES_OPTIONAL:
    desc[f] = tf.io.FixedLenFeature([], tf.string, default_value='')
  desc['teacher_target_ids'] = tf.io.VarLenFeature(tf.int64)
  desc['teacher_topk_k'] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
  desc['vote_share'] = tf.io.FixedLenFeature([], tf.float32, default_value=1.0)
  return desc


def encode_topk(ids: np.ndarray, logprobs: np.ndarray,
                vocab_size: int) -> dict[str, Any]:
  """Compact top-k: ids as uint16 (uint32 if the vocab needs it), log-probs fp16.

  Args:
    ids: [length, k] integer token ids.
    logprobs: [length, k] log-probabilities.
    vocab_size: size of the vocabulary the ids index.
  """
  ids = np.asarray(ids)
  logprobs = np.asarray(logprobs)
  if ids.shape != logprobs.shape or ids.ndim != 2:
    raise ValueError(f'top-k ids {ids.shape} and log-probs {logprobs.shape} must '
                     'both be [length, k]')
  id_dtype = 'uint16' if vocab_size <= 65536 else 'uint32'
  return {
      'teacher_topk_k': int(ids.shape[1]),
      'teacher_topk_ids': ids.astype('<' + ('u2' if id_dtype == 'uint16' else 'u4')).tobytes(),
      'teacher_topk_logprobs': logprobs.astype('<f2').tobytes(),
      'teacher_topk_id_dtype': id_dtype,
  }


def decode_topk(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """Inverse of `encode_topk`: returns ids int32 [L, k], log-probs float32 [L, k]."""
  k = int(record['teacher_topk_k'])
  if k <= 0:
    raise ValueError(f"record {record.get('id')!r} has no teacher top-k")
  id_dtype = _as_str(record.get('teacher_topk_id_dtype') or 'uint16')
  np_dtype = {'uint16': '<u2', 'uint32': '<u4'}[id_dtype]
  ids = np.frombuffer(record['teacher_topk_ids'], dtype=np_dtype)
  lps = np.frombuffer(record['teacher_topk_logprobs'], dtype='<f2')
  if ids.size != lps.size or ids.size % k:
    raise ValueError(f"record {record.get('id')!r}: corrupt top-k "
                     f'({ids.size} ids, {lps.size} log-probs, k={k})')
  return (ids.reshape(-1, k).astype(np.int32),
          lps.reshape(-1, k).astype(np.float32))


def _as_str(v: Any) -> str:
  return v.decode('utf-8') if isinstance(v, bytes) else str(v)


def to_example(record: Mapping[str, Any]) -> tf.train.Example:
  """Builds a `tf.train.Example`; missing text fields become ''."""
  feats = {}
  for f in TEXT_FIELDS:
    v = record.get(f, '')
    if v is None:
      v = ''
    if not isinstance(v, (str, bytes)):
      raise TypeError(f'field {f!r} of record {record.get("id")!r} must be text, '
                      f'got {type(v).__name__}')
    b = v.encode('utf-8') if isinstance(v, str) else v
    feats[f] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))
  for f in _BYTES_OPTIONAL:
    if record.get(f):
      v = record[f]
      b = v.encode('utf-8') if isinstance(v, str) else bytes(v)
      feats[f] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))
  if record.get('teacher_target_ids') is not None:
    feats['teacher_target_ids'] = tf.train.Feature(int64_list=tf.train.Int64List(
        value=[int(x) for x in record['teacher_target_ids']]))
  if record.get('teacher_topk_k'):
    feats['teacher_topk_k'] = tf.train.Feature(
        int64_list=tf.train.Int64List(value=[int(record['teacher_topk_k'])]))
  if record.get('vote_share') is not None:
    feats['vote_share'] = tf.train.Feature(
        float_list=tf.train.FloatList(value=[float(record['vote_share'])]))
  return tf.train.Example(features=tf.train.Features(feature=feats))


def from_example(serialized: bytes) -> dict[str, Any]:
  """Parses a serialized example into plain Python values (str, bytes, np)."""
  ex = tf.train.Example.FromString(serialized)
  f = ex.features.feature
  out: dict[str, Any] = {}
  for name in TEXT_FIELDS:
    out[name] = f[name].bytes_list.value[0].decode('utf-8') if name in f else ''
  for name in _BYTES_OPTIONAL:
    if name in f:
      v = f[name].bytes_list.value[0]
      out[name] = v if name in _RAW_BYTES else v.decode('utf-8')
  if 'teacher_target_ids' in f:
    out['teacher_target_ids'] = np.asarray(f['teacher_target_ids'].int64_list.value, np.int64)
  out['teacher_topk_k'] = int(f['teacher_topk_k'].int64_list.value[0]) if 'teacher_topk_k' in f else 0
  out['vote_share'] = float(f['vote_share'].float_list.value[0]) if 'vote_share' in f else 1.0
  return out


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f'{split}.tfrecord-{index:05d}-of-{num_shards:05d}'


def shard_pattern(split: str) -> str:
  return f'{split}.tfrecord-*-of-*'


def split_files(records_dir: str, split: str, hint: str = '') -> list[str]:
  """The complete shards of `split` in `records_dir` (never `.tmp-` files).

  Raises FileNotFoundError naming the pattern, followed by `hint`.
  """
  pattern = os.path.join(records_dir, shard_pattern(split))
  files = sorted(f for f in tf.io.gfile.glob(pattern) if '.tmp-' not in f)
  if not files:
    raise FileNotFoundError(f'no records match {pattern!r}' + (f'; {hint}' if hint else ''))
  return files


def write_shards(out_dir: str, split: str, records: Iterable[Mapping[str, Any]],
                 num_shards: int = 1) -> list[str]:
  """Writes records round-robin into `num_shards` shards, atomically.

  Each shard is written under a temporary name and renamed only when every
  shard is complete, so readers never see a partial split and an earlier
  complete split is replaced only by a complete one.
  """
  tf.io.gfile.makedirs(out_dir)
  tag = uuid.uuid4().hex[:8]
  final = [os.path.join(out_dir, shard_name(split, i, num_shards)) for i in range(num_shards)]
  tmp = [p + f'.tmp-{tag}' for p in final]
  writers = [tf.io.TFRecordWriter(p) for p in tmp]
  try:
    for i, rec in enumerate(records):
      writers[i % num_shards].write(to_example(rec).SerializeToString())
  except BaseException:
    for w in writers:
      w.close()
    for p in tmp:
      if tf.io.gfile.exists(p):
        tf.io.gfile.remove(p)
    raise
  for w in writers:
    w.close()
  # Remove stale shards of the same split with another shard count.
  for old in tf.io.gfile.glob(os.path.join(out_dir, shard_pattern(split))):
    if old not in final and '.tmp-' not in os.path.basename(old):
      tf.io.gfile.remove(old)
  for t, p in zip(tmp, final):
    tf.io.gfile.rename(t, p, overwrite=True)
  return final


def read_records(pattern: str) -> Iterator[dict[str, Any]]:
  """Yields records from every file matching `pattern`, in file order."""
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f'no record files match {pattern!r}')
  for path in files:
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      yield from_example(raw)
