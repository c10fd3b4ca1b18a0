"""SeqIO data sources over the prepared / teacher records (`schema.py` format).

`RecordsSource` (the shared base) reads `{records_dir}/{split}.tfrecord-*` in
file order, keeps a nested train fraction (`splits.fraction_mask`, seed 0: the
`_{frac}` task variants), shards, and hands the serialized records to the
subclass's `convert`:
  SbsRecordsSource   one step-by-step task kind's text features (`tasks/sbs.py`)
  TopKRecordsSource  teacher top-k features for FIRST (`data/topk.py`)
Records are found when a dataset is built, so `$DISTILL_SBS_DATA_DIR` may be
set after the tasks are registered. Opening a split checks its shards
(`verify_shards`): against the sha256 digests of a `prepare` manifest, else by
reading them once; a damaged or changed shard raises `DataIntegrityError`
naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from distill_sbs.data import formats
from distill_sbs.data import paths
from distill_sbs.data import schema
from distill_sbs.data import splits as splits_lib

SPLITS = paths.SPLITS


def count_records(files: Sequence[str]) -> int:
  return int(tf.data.TFRecordDataset(list(files)).reduce(
      np.int64(0), lambda n, _: n + 1).numpy())


class DataIntegrityError(ValueError):
  """A record shard is damaged, missing or differs from its manifest."""
  user_error = True  # the command line prints the message without a traceback


_VERIFIED: set[tuple[str, int, int]] = set()
PREPARE_HINT = 're-run `python -m distill_sbs.data.prepare` for this dataset'


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with tf.io.gfile.GFile(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def verify_shards(records_dir: str, split: str, files: Sequence[str]) -> None:
  """Raises `DataIntegrityError` naming a shard of `split` that differs from
  the manifest's digest (or, without digests, cannot be read to its end)."""
  manifest_path = os.path.join(records_dir, paths.MANIFEST)
  digests, listed = None, None
  if tf.io.gfile.exists(manifest_path):
    with tf.io.gfile.GFile(manifest_path) as f:
      manifest = json.load(f)
    digests = manifest.get(paths.SHARD_DIGESTS)
    listed = (manifest.get('splits', {}).get(split) or {}).get('files')
  if digests is not None and listed is not None:
    present = {os.path.basename(f) for f in files}
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    if missing or extra:
      raise DataIntegrityError(
          f'{records_dir}: split {split!r} has shards {sorted(present)} but {manifest_path} '
          f'lists {sorted(listed)}; {PREPARE_HINT}')
  for path in files:
    st = tf.io.gfile.stat(path)
    key = (path, int(st.length), int(st.mtime_nsec))
    if key in _VERIFIED:
      continue
    if digests is not None:
      want, got = digests.get(os.path.basename(path)), _sha256(path)
      if want is None:
        raise DataIntegrityError(f'{path}: not listed in {manifest_path}; {PREPARE_HINT}')
      if got != want:
        raise DataIntegrityError(
            f'{path}: sha256 {got[:16]}… differs from {manifest_path} ({want[:16]}…): the '
            f'file was changed or damaged; {PREPARE_HINT}')
    else:
      try:
        count_records([path])
      except tf.errors.OpError as e:
        raise DataIntegrityError(f'{path}: cannot read this record shard '
                                 f'({type(e).__name__}: {e.message})') from None
    _VERIFIED.add(key)


class RecordsSource(seqio.DataSource):
  """Base: lazily resolved records directory, nested train fraction, sharding.

  Subclasses implement `convert(records, split)` (serialized records → examples)
  and may override `missing_hint` (the error text when a split has no shard).
  """

  def __init__(self, records_dir: Optional[str] = None, *,
               default_dir: Optional[Callable[[], str]] = None,
               fraction_pct: Optional[float] = None, fraction_seed: int = 0,
               splits: Sequence[str] = SPLITS):
    super().__init__(splits=splits)
    if fraction_pct is not None:
      splits_lib.fraction_size(1, fraction_pct)  # validates the range
    self._records_dir, self._default_dir = records_dir, default_dir
    self.fraction_pct, self.fraction_seed = fraction_pct, fraction_seed

  @property
  def records_dir(self) -> str:
    if self._records_dir:
      return os.path.expanduser(self._records_dir)
    if self._default_dir is None:
      raise ValueError(f'{type(self).__name__} needs records_dir')
    return self._default_dir()

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def missing_hint(self) -> str:
    return (f'run `python -m distill_sbs.data.prepare --raw_dir ...` or set '
            f'${paths.DATA_DIR_ENV}')

  def list_shards(self, split: str) -> Sequence[str]:
    return self._files(split)

  def _files(self, split: str) -> list[str]:
    files = schema.split_files(self.records_dir, split, self.missing_hint())
    verify_shards(self.records_dir, split, files)
    return files

  def train_mask(self, files: Sequence[str]) -> np.ndarray:
    """bool [n]: the train records (in file order) this fraction keeps."""
    return splits_lib.fraction_mask(count_records(files), self.fraction_pct,
                                    self.fraction_seed)

  def records(self, split: str, shard_info: Optional[seqio.ShardInfo] = None
              ) -> tf.data.Dataset:
    """Serialized records of `split`: file order, train fraction, shard."""
    if split not in self.splits:
      raise ValueError(f'unknown split {split!r}; expected one of {tuple(self.splits)}')
    files = self._files(split)
    d = tf.data.TFRecordDataset(files)  # sequential: file order is the id order
    if self.fraction_pct is not None and split == 'train':
      mask = tf.constant(self.train_mask(files))
      d = d.enumerate().filter(lambda i, _: tf.gather(mask, i)).map(lambda _, x: x)
    if shard_info is not None and shard_info.num_shards > 1:
      d = d.shard(shard_info.num_shards, shard_info.index)
    return d

  def convert(self, records: tf.data.Dataset, split: str) -> tf.data.Dataset:
    raise NotImplementedError

  def get_dataset(self, split: str = 'train', shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length=None, use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del shuffle, seed, sequence_length, use_cached, num_epochs  # Task shuffles.
    return self.convert(self.records(split, shard_info), split)


# ------------------------------------------------------------- step-by-step

PREDICT_PREFIX = 'predict: '
EXPLAIN_PREFIX = 'explain: '
COT_SEPARATOR = ' So the answer is '
LABEL_KINDS = ('label_gold', 'label_llm', 'predict_gold', 'predict_llm')
TASK_KINDS = LABEL_KINDS + ('rationale', 'cot', 'paired_gold', 'paired_llm')

_TEXT_SPEC = {f: tf.io.FixedLenFeature([], tf.string, default_value='')
              for f in schema.TEXT_FIELDS}


def sbs_features(kind: str, split: str, r: Mapping[str, tf.Tensor]
                 ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
  """(features, keep) of one parsed record for one step-by-step task kind."""
  train = split == 'train'
  gold = r['label']
  teacher = r['llm_label'] if train else gold
  nonempty = lambda t: tf.strings.length(t) > 0
  x = r['inputs']
  if kind in ('label_gold', 'predict_gold'):
    target = gold
  elif kind in ('label_llm', 'predict_llm'):
    target = teacher
  elif kind == 'rationale':
    return {'inputs': EXPLAIN_PREFIX + x, 'targets': r['rationale']}, nonempty(
        r['rationale'])
  elif kind == 'cot':
    # Eval splits keep every example (gold label; the rationale may be empty).
    lab = teacher
    target = tf.strings.strip(r['rationale'] + COT_SEPARATOR + lab)
    keep = nonempty(lab) & (nonempty(r['rationale']) | tf.constant(not train))
    return {'inputs': x, 'targets': target}, keep
  elif kind in ('paired_gold', 'paired_llm'):
    lab = gold if kind == 'paired_gold' else teacher
    return ({'inputs': PREDICT_PREFIX + x, 'targets': lab,
             'rationale_inputs': EXPLAIN_PREFIX + x,
             'rationale_targets': r['rationale']},
            nonempty(r['rationale']) & nonempty(lab))
  else:
    raise ValueError(f'unknown sbs task kind {kind!r}; expected one of {TASK_KINDS}')
  prefix = PREDICT_PREFIX if kind.startswith('predict') else ''
  return {'inputs': prefix + x, 'targets': target}, nonempty(target)


class SbsRecordsSource(RecordsSource):
  """The prepared records of `ds` (`records_dir` or `paths.dataset_dir(ds)`)
  as one step-by-step task kind's text features (teacher-dependent targets
  skip records whose teacher parse failed)."""

  def __init__(self, ds: str, kind: str, records_dir: Optional[str] = None,
               fraction_pct: Optional[float] = None, fraction_seed: int = 0):
    formats.check_dataset(ds)
    if kind not in TASK_KINDS:
      raise ValueError(f'unknown sbs task kind {kind!r}; expected one of {TASK_KINDS}')
    super().__init__(records_dir, default_dir=lambda: paths.dataset_dir(ds),
                     fraction_pct=fraction_pct, fraction_seed=fraction_seed)
    self.ds, self.kind = ds, kind

  def convert(self, records: tf.data.Dataset, split: str) -> tf.data.Dataset:
    kind = self.kind

    def fn(serialized):
      return sbs_features(kind, split, tf.io.parse_single_example(serialized, _TEXT_SPEC))

    d = records.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return d.filter(lambda _, keep: keep).map(lambda f, _: f)


# ------------------------------------------------------------- teacher top-k

class VocabularyMismatchError(ValueError):
  """Teacher top-k ids index a different vocabulary than the student's."""


def student_vocab_hash(vocabulary: seqio.Vocabulary) -> str:
  from distill_sbs.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return vocab_lib.vocab_hash(vocabulary)


def check_vocab(teacher_hash: str, vocabulary: seqio.Vocabulary, *, where: str = '',
                require_hash: bool = True) -> None:
  """Refuses top-k records whose teacher vocabulary differs from the student's."""
  teacher_hash = teacher_hash.decode() if isinstance(teacher_hash, bytes) else teacher_hash
  student = student_vocab_hash(vocabulary)
  if not teacher_hash:
    if require_hash:
      raise VocabularyMismatchError(
          f'{where}: teacher top-k records carry no teacher_vocab_hash, so they cannot be '
          f'checked against the student vocabulary {vocabulary} (sha256 {student}); '
          'regenerate them with the teacher vocabulary hash or pass require_vocab_hash=False')
    return
  if teacher_hash != student:
    raise VocabularyMismatchError(
        f'{where}: teacher vocabulary (teacher_vocab_hash sha256 {teacher_hash}) differs from '
        f'the student vocabulary {vocabulary} (sha256 {student}); FIRST needs the teacher '
        'and the student to share one SentencePiece model')


_TOPK_SPEC = {
    'id': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'inputs': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'label': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'teacher_topk_field': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'teacher_target_ids': tf.io.VarLenFeature(tf.int64),
    'teacher_topk_k': tf.io.FixedLenFeature([], tf.int64, default_value=0),
    'teacher_topk_ids': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'teacher_topk_logprobs': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'teacher_topk_id_dtype': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'teacher_vocab_hash': tf.io.FixedLenFeature([], tf.string, default_value=''),
}


def decode_topk_tf(rec: Mapping[str, tf.Tensor], k: int, id_dtype: str
                   ) -> tuple[tf.Tensor, tf.Tensor]:
  """Graph-mode `schema.decode_topk`: ([L, k] int32 ids, [L, k] float32 log-probs)."""
  raw_ids = tf.io.decode_raw(rec['teacher_topk_ids'],
                             tf.uint16 if id_dtype == 'uint16' else tf.uint32,
                             little_endian=True)
  lps = tf.io.decode_raw(rec['teacher_topk_logprobs'], tf.float16, little_endian=True)
  ids = tf.reshape(tf.cast(raw_ids, tf.int32), [-1, k])
  lps = tf.reshape(tf.cast(lps, tf.float32), [-1, k])
  return ids, lps


class TopKRecordsSource(RecordsSource):
  """Records with a teacher top-k: features id, inputs (+`input_prefix`),
  label, targets (teacher ids), teacher_topk_ids, teacher_topk_logprobs.

  At dataset-creation time the first top-k record of the split fixes k and the
  id dtype and is checked against the student vocabulary; every record's hash
  is asserted in the graph as well. Records without a top-k are skipped;
  `topk_field` (e.g. 'llm_output') keeps only records aligned to that field.
  """

  def __init__(self, records_dir: Optional[str] = None, *, vocabulary: seqio.Vocabulary,
               default_dir: Optional[Any] = None, topk_field: Optional[str] = None,
               require_vocab_hash: bool = True, input_prefix: str = '',
               fraction_pct: Optional[float] = None, fraction_seed: int = 0,
               splits: Sequence[str] = SPLITS):
    super().__init__(records_dir, default_dir=default_dir, fraction_pct=fraction_pct,
                     fraction_seed=fraction_seed, splits=splits)
    self.vocabulary, self.topk_field = vocabulary, topk_field
    self.require_vocab_hash = require_vocab_hash
    self.input_prefix = input_prefix

  def missing_hint(self) -> str:
    return ('write the FIRST top-k records with `python -m distill_sbs.generate_rationales '
            f'--backend=local --out_dir={self.records_dir} ...`')

  def probe(self, split: str) -> tuple[int, str, str]:
    """(k, id dtype, teacher vocab hash) of the first top-k record; checks the vocab."""
    for path in self._files(split):
      for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        rec = schema.from_example(raw)
        if rec['teacher_topk_k'] and (not self.topk_field or
                                      rec.get('teacher_topk_field') == self.topk_field):
          h = rec.get('teacher_vocab_hash', '')
          check_vocab(h, self.vocabulary, where=f"{path} (record {rec['id']!r})",
                      require_hash=self.require_vocab_hash)
          return (int(rec['teacher_topk_k']), rec.get('teacher_topk_id_dtype') or 'uint16', h)
    raise ValueError(f'no record in {self.records_dir} split {split!r} has a teacher top-k'
                     + (f' aligned to {self.topk_field!r}' if self.topk_field else ''))

  def convert(self, records: tf.data.Dataset, split: str) -> tf.data.Dataset:
    k, id_dtype, expected_hash = self.probe(split)
    field, prefix = self.topk_field, self.input_prefix

    def keep(rec):
      ok = rec['teacher_topk_k'] > 0
      if field:
        ok = ok & tf.equal(rec['teacher_topk_field'], field)
      return ok

    def fn(rec):
      msg = (f'FIRST records in {self.records_dir}: a record\'s teacher_vocab_hash differs '
             f'from {expected_hash} (the student vocabulary); record id / hash:')
      check = tf.debugging.Assert(tf.equal(rec['teacher_vocab_hash'], expected_hash),
                                  [msg, rec['id'], rec['teacher_vocab_hash']])
      k_check = tf.debugging.Assert(tf.equal(rec['teacher_topk_k'], k),
                                    [f'record with k != {k}:', rec['id']])
      with tf.control_dependencies([check, k_check]):
        ids, lps = decode_topk_tf(rec, k, id_dtype)
        targets = tf.cast(tf.sparse.to_dense(rec['teacher_target_ids']), tf.int32)
      n_check = tf.debugging.assert_equal(
          tf.shape(targets)[0], tf.shape(ids)[0],
          message='teacher_target_ids and the top-k rows differ in length')
      with tf.control_dependencies([n_check]):
        targets = tf.identity(targets)
      return {'id': rec['id'], 'inputs': prefix + rec['inputs'], 'label': rec['label'],
              'targets': targets, 'teacher_topk_ids': ids, 'teacher_topk_logprobs': lps}

    d = records.map(lambda x: tf.io.parse_single_example(x, _TOPK_SPEC),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return d.filter(keep).map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
