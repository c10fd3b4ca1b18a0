"""Teacher top-k features for FIRST: record source, preprocessors, converter.

A FIRST record (see `schema.py`) stores the teacher's tokenization of one text
field (`teacher_target_ids`, with EOS) and, per target token, the k teacher ids
(uint16/uint32 bytes) and log-probs (float16 bytes). Because teacher and
student share the vocabulary (checked by `teacher_vocab_hash`), the student's
target tokens ARE `teacher_target_ids`, so the top-k rows align with the
targets position by position.

Task features (after `TopKRecordsSource` + `tokenize_inputs_and_trim`):
  inputs                 [Li]     int32 (student vocabulary, EOS appended)
  targets                [L]      int32 = teacher_target_ids
  teacher_topk_ids       [L, k]   int32
  teacher_topk_logprobs  [L, k]   float32
Model features (`TopKFeatureConverter`, T5X names):
  encoder_input_tokens, decoder_target_tokens, decoder_input_tokens,
  decoder_loss_weights, decoder_topk_ids [Lt, k] int32,
  decoder_topk_logprobs [Lt, k] float32 (0 on padding).
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from distill_sbs.data import schema
from distill_sbs.data import splits as splits_lib
from distill_sbs.distill import temperature as temperature_lib

TOPK_TASK_FEATURES = ('teacher_topk_ids', 'teacher_topk_logprobs')
TOPK_MODEL_FEATURES = ('decoder_topk_ids', 'decoder_topk_logprobs')


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


_SPEC = {
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


class TopKRecordsSource(seqio.DataSource):
  """Reads `{records_dir}/{split}.tfrecord-*` with teacher top-k.

  At dataset-creation time the first top-k record of the split fixes k and the
  id dtype and is checked against the student vocabulary; every record's hash
  is asserted in the graph as well. Records without a top-k are skipped;
  `topk_field` (e.g. 'llm_output') keeps only records aligned to that field.
  """

  def __init__(self, records_dir: Optional[str] = None, *, vocabulary: seqio.Vocabulary,
               default_dir: Optional[Any] = None, topk_field: Optional[str] = None,
               require_vocab_hash: bool = True, input_prefix: str = '',
               fraction_pct: Optional[float] = None, fraction_seed: int = 0,
               splits: Sequence[str] = ('train', 'validation', 'test')):
    super().__init__(splits=splits)
    self._records_dir, self._default_dir = records_dir, default_dir
    self.vocabulary, self.topk_field = vocabulary, topk_field
    self.require_vocab_hash = require_vocab_hash
    self.input_prefix = input_prefix
    if fraction_pct is not None:
      splits_lib.fraction_size(1, fraction_pct)  # validates the range
    self.fraction_pct, self.fraction_seed = fraction_pct, fraction_seed

  @property
  def records_dir(self) -> str:
    if self._records_dir:
      return os.path.expanduser(self._records_dir)
    if self._default_dir is None:
      raise ValueError('TopKRecordsSource needs records_dir')
    return self._default_dir()

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return self._files(split)

  def _files(self, split: str) -> list[str]:
    return schema.split_files(
        self.records_dir, split,
        'write the FIRST top-k records with `python -m distill_sbs.generate_rationales '
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

  def get_dataset(self, split: str = 'train', shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length=None, use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del shuffle, seed, sequence_length, use_cached, num_epochs  # Task shuffles.
    files = self._files(split)
    k, id_dtype, expected_hash = self.probe(split)
    d = tf.data.TFRecordDataset(files)  # sequential: file order is the record order
    if self.fraction_pct is not None and split == 'train':
      n = int(d.reduce(np.int64(0), lambda c, _: c + 1).numpy())
      mask = tf.constant(splits_lib.fraction_mask(n, self.fraction_pct, self.fraction_seed))
      d = d.enumerate().filter(lambda i, _: tf.gather(mask, i)).map(lambda _, x: x)
    if shard_info is not None and shard_info.num_shards > 1:
      d = d.shard(shard_info.num_shards, shard_info.index)
    field, prefix = self.topk_field, self.input_prefix

    def keep(rec):
      ok = rec['teacher_topk_k'] > 0
      if field:
        ok = ok & tf.equal(rec['teacher_topk_field'], field)
      return ok

    def convert(rec):
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

    d = d.map(lambda x: tf.io.parse_single_example(x, _SPEC),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return d.filter(keep).map(convert, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)


def tokenize_inputs_and_trim(dataset: tf.data.Dataset, output_features,
                             sequence_length=None) -> tf.data.Dataset:
  """Tokenizes `inputs` (+EOS after trim); trims targets and top-k rows together.

  `targets` arrive as teacher ids (EOS included), so only trimming applies.
  Keeps `inputs_pretokenized` and `targets_pretokenized` (the gold label, what
  label metrics compare predictions against).
  """
  vocab = output_features['inputs'].vocabulary
  in_len = (sequence_length or {}).get('inputs')
  tgt_len = (sequence_length or {}).get('targets')

  def fn(ex):
    out = dict(ex)
    inputs = vocab.encode_tf(ex['inputs'])
    if in_len:
      inputs = inputs[:in_len - 1]
    out['inputs'] = tf.concat([tf.cast(inputs, tf.int32), [vocab.eos_id]], 0)
    out['inputs_pretokenized'] = ex['inputs']
    out['targets_pretokenized'] = ex['label']
    if tgt_len:
      for f in ('targets',) + TOPK_TASK_FEATURES:
        out[f] = ex[f][:tgt_len]
    out.pop('label')
    return out

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def add_onehot_topk(dataset: tf.data.Dataset, output_features, k: int = 5
                    ) -> tf.data.Dataset:
  """Top-k features for a task with no teacher distribution (e.g. gold
  rationales in a FIRST + step-by-step mixture): the target id with log-prob 0
  and k−1 other ids with log-prob −1e4. With `TopKDistillLoss(rest_bucket=True)`
  the KL on such a token is the cross-entropy of the target."""
  vocab_size = output_features['targets'].vocabulary.vocab_size

  def fn(ex):
    t = tf.cast(ex['targets'], tf.int32)  # [L]
    ids = (t[:, None] + tf.range(k, dtype=tf.int32)[None]) % vocab_size  # [L, k]
    lps = tf.concat([tf.zeros_like(t, tf.float32)[:, None],
                     tf.fill([tf.shape(t)[0], k - 1], -1e4)], axis=1)
    return dict(ex, teacher_topk_ids=ids, teacher_topk_logprobs=lps)

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def topk_output_features() -> dict[str, seqio.Feature]:
  """Output features that keep the top-k through seqio mixtures."""
  v = seqio.PassThroughVocabulary(size=0)
  return {'teacher_topk_ids': seqio.Feature(v, add_eos=False, dtype=tf.int32, rank=2),
          'teacher_topk_logprobs': seqio.Feature(v, add_eos=False, dtype=tf.float32, rank=2)}


class TopKFeatureConverter(seqio.EncDecFeatureConverter):
  """`EncDecFeatureConverter` + the teacher top-k as `decoder_topk_*` [Lt, k].

  `task_feature_lengths` needs only `inputs` and `targets` (T5X's
  TASK_FEATURE_LENGTHS): the top-k rows take the targets length. No packing.
  """

  TASK_FEATURES = {
      **seqio.EncDecFeatureConverter.TASK_FEATURES,
      'teacher_topk_ids': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=2),
      'teacher_topk_logprobs': seqio.FeatureConverter.FeatureSpec(dtype=tf.float32, rank=2),
  }
  MODEL_FEATURES = {
      **seqio.EncDecFeatureConverter.MODEL_FEATURES,
      'decoder_topk_ids': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=2),
      'decoder_topk_logprobs': seqio.FeatureConverter.FeatureSpec(dtype=tf.float32, rank=2),
  }

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      raise ValueError('TopKFeatureConverter does not support packing (pack=False)')
    super().__init__(pack=False, **kwargs)

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
               ) -> tf.data.Dataset:
    if not all(f in ds.element_spec for f in TOPK_TASK_FEATURES):
      # A plain task (e.g. gold-label evaluation): the standard conversion.
      plain = {k: v for k, v in task_feature_lengths.items() if k not in TOPK_TASK_FEATURES}
      return seqio.EncDecFeatureConverter(pack=False, bos_id=self.bos_id)(ds, plain)
    lengths = dict(task_feature_lengths)
    if 'targets' not in lengths:
      raise ValueError(f'task_feature_lengths {sorted(lengths)} needs "targets"')
    for f in TOPK_TASK_FEATURES:
      lengths.setdefault(f, lengths['targets'])
    return super().__call__(ds, lengths)

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    d['decoder_topk_ids'] = features['teacher_topk_ids']
    d['decoder_topk_logprobs'] = features['teacher_topk_logprobs']
    return d

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(
        {k: v for k, v in task_feature_lengths.items() if k not in TOPK_TASK_FEATURES}))
    lengths['decoder_topk_ids'] = lengths['decoder_target_tokens']
    lengths['decoder_topk_logprobs'] = lengths['decoder_target_tokens']
    return lengths


def bytes_per_target_token(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Storage of the compact top-k per target token (ids + log-probs + target id)."""
  n_tok = sum(len(r['teacher_target_ids']) for r in records if r.get('teacher_topk_k'))
  if not n_tok:
    raise ValueError('no record with a teacher top-k')
  topk = sum(len(r['teacher_topk_ids']) + len(r['teacher_topk_logprobs'])
             for r in records if r.get('teacher_topk_k'))
  return {'topk_bytes_per_token': topk / n_tok, 'target_tokens': float(n_tok)}


@gin.configurable
def teacher_temperature(task: Optional[str] = None, records_dir: Optional[str] = None,
                        default: Optional[float] = None, split: str = 'train',
                        registry_module: Optional[str] = 'distill_sbs.tasks') -> float:
  """The calibrated teacher T (`manifest.json` key `teacher_temperature`) of the
  records behind FIRST task `task` (or of `records_dir`), for gin:
  `TopKDistillLoss.teacher_temperature = @topk.teacher_temperature()`.

  `registry_module` is imported first when `task` is not registered yet, as
  `input_pipeline.DatasetConfig.module` (a name bound late, not an import of
  the tasks package: gin builds the loss before the input pipeline).
  """
  del split
  if records_dir is None:
    if task is None:
      raise ValueError('teacher_temperature needs task or records_dir')
    if registry_module and task not in (set(seqio.TaskRegistry.names())
                                        | set(seqio.MixtureRegistry.names())):
      importlib.import_module(registry_module)
    obj = seqio.get_mixture_or_task(task)
    tasks = obj.tasks if isinstance(obj, seqio.Mixture) else [obj]
    sources = [t.source for t in tasks if isinstance(t.source, TopKRecordsSource)]
    if not sources:
      raise ValueError(f'task {task!r} is not a FIRST top-k task (nor a mixture with one)')
    records_dir = sources[0].records_dir
  return temperature_lib.read_teacher_temperature(records_dir, default=default)
