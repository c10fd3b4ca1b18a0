"""Teacher top-k features for FIRST: preprocessors, converter, temperature.

A FIRST record (see `schema.py`) stores the teacher's tokenization of one text
field (`teacher_target_ids`, with EOS) and, per target token, the k teacher ids
(uint16/uint32 bytes) and log-probs (float16 bytes). Because teacher and
student share the vocabulary (checked by `teacher_vocab_hash`), the student's
target tokens ARE `teacher_target_ids`, so the top-k rows align with the
targets position by position.

Task features (after `record_sources.TopKRecordsSource` + `tokenize_inputs_and_trim`):
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

import dataclasses
import importlib
from typing import Any, Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from distill_sbs.data import feature_converters
from distill_sbs.data import record_sources
from distill_sbs.distill import temperature as temperature_lib

# The top-k record source and its vocabulary check live with the other record
# sources; these names stay importable from here.
TopKRecordsSource = record_sources.TopKRecordsSource
VocabularyMismatchError = record_sources.VocabularyMismatchError
check_vocab = record_sources.check_vocab
decode_topk_tf = record_sources.decode_topk_tf
student_vocab_hash = record_sources.student_vocab_hash

TOPK_TASK_FEATURES = ('teacher_topk_ids', 'teacher_topk_logprobs')
TOPK_MODEL_FEATURES = ('decoder_topk_ids', 'decoder_topk_logprobs')
_TOPK_FEATURE_NAMES = TOPK_TASK_FEATURES + TOPK_MODEL_FEATURES


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


class TopKFeatureConverter(feature_converters.EncDecFeatureConverter):
  """`EncDecFeatureConverter` + the teacher top-k as `decoder_topk_*` [Lt, k].

  `task_feature_lengths` needs only `inputs` and `targets` (T5X's
  TASK_FEATURE_LENGTHS): the top-k rows take the targets length. With
  pack=True the [L, k] rows travel with their tokens (the packer places whole
  [L, k] pieces where the targets go):

    targets        [A, B, 1]          [C, 1]
    topk_ids       [[a…], [b…], [e…]] [[c…], [e…]]     (k entries per token)
    packed targets [A, B, 1, C, 1, 0]                  Lt = 6
    packed topk    [[a…], [b…], [e…], [c…], [e…], [0…]]   [6, k]
  """

  TASK_FEATURES = {
      **feature_converters.EncDecFeatureConverter.TASK_FEATURES,
      'teacher_topk_ids': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=2),
      'teacher_topk_logprobs': seqio.FeatureConverter.FeatureSpec(dtype=tf.float32, rank=2),
  }
  MODEL_FEATURES = {
      **feature_converters.EncDecFeatureConverter.MODEL_FEATURES,
      'decoder_topk_ids': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=2),
      'decoder_topk_logprobs': seqio.FeatureConverter.FeatureSpec(dtype=tf.float32, rank=2),
  }

  def __init__(self, pack: bool = False, **kwargs):
    super().__init__(pack=pack, **kwargs)
    if pack:
      # seqio refuses to pack model features of rank > 1 (its packer cannot);
      # ours (`data.packing`) can, and they are checked as rank 2
      # (`_validate_dataset`).
      self.MODEL_FEATURES = {
          name: (dataclasses.replace(spec, rank=1) if name in TOPK_MODEL_FEATURES else spec)
          for name, spec in type(self).MODEL_FEATURES.items()}

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
               ) -> tf.data.Dataset:
    if not all(f in ds.element_spec for f in TOPK_TASK_FEATURES):
      # A plain task (e.g. gold-label evaluation): the standard conversion.
      plain = {k: v for k, v in task_feature_lengths.items() if k not in TOPK_TASK_FEATURES}
      return feature_converters.EncDecFeatureConverter(
          pack=self.pack, bos_id=self.bos_id, num_bins=self.num_bins,
          encoder_block_length=self.encoder_block_length)(ds, plain)
    lengths = dict(task_feature_lengths)
    if 'targets' not in lengths:
      raise ValueError(f'task_feature_lengths {sorted(lengths)} needs "targets"')
    for f in TOPK_TASK_FEATURES:
      lengths.setdefault(f, lengths['targets'])
    return super().__call__(ds, lengths)

  def _validate_dataset(self, ds, expected_features, *args, **kwargs):
    # The top-k features are [L, k] (rank 2) whether packed or not; see __init__.
    expected_features = {
        name: (dataclasses.replace(spec, rank=2) if name in _TOPK_FEATURE_NAMES else spec)
        for name, spec in expected_features.items()}
    return super()._validate_dataset(ds, expected_features, *args, **kwargs)

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
