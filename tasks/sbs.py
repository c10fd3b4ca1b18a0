"""Distilling step-by-step SeqIO tasks and mixtures (registered at import).

Per dataset `ds` in cqa, svamp, esnli, anli1 (prefix 'sbs'):
  sbs_{ds}_label_gold    input -> gold label (standard finetuning)
  sbs_{ds}_label_llm     input -> teacher label on train, gold on validation/test
                         (standard distillation)
  sbs_{ds}_predict_gold  'predict: ' input -> gold label   (mixture component)
  sbs_{ds}_predict_llm   'predict: ' input -> teacher/gold label (mixture component)
  sbs_{ds}_rationale     'explain: ' input -> teacher rationale (token-level
                         metrics only)
  sbs_{ds}_cot           input -> rationale + COT_SEPARATOR + label; the
                         postprocessor keeps the label for the metrics
  sbs_{ds}_paired_gold / sbs_{ds}_paired_llm
                         features inputs ('predict: ...'), targets (label),
                         rationale_inputs ('explain: ...'), rationale_targets;
                         for `feature_converters.PairedEncDecFeatureConverter`
  mixtures sbs_{ds}_gold / sbs_{ds}_llm = predict_{gold,llm} (rate α) +
                         rationale (rate 1−α), α = `mixture_alpha()` (gin, 0.5)
Data-fraction variants of every task and mixture: `{name}_{frac}` with frac in
12p5pct, 25pct, 50pct, 75pct, 100pct ('.' spelled 'p'): the train split keeps
the first round(pct%·n) records of a fixed seed-0 permutation of the train
records (in file order), so smaller fractions are nested in larger ones;
validation and test stay whole.

Teacher-dependent targets skip records whose teacher parse failed (empty
`llm_label` / `rationale`), except that `cot` keeps every validation/test
example (target 'So the answer is {gold}' when the rationale is empty) so its
accuracy covers the whole split. Records are read at `get_dataset` time from
`paths.data_dir()/{ds}` (or `records_dir`), so `$DISTILL_SBS_DATA_DIR` may be set
after import. Vocabulary: `vocab.DEFAULT_VOCABULARY` (lazy; see data/vocab.py).
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from distill_sbs.data import formats
from distill_sbs.data import paths
from distill_sbs.data import schema
from distill_sbs.data import splits as splits_lib
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.metrics import accuracy
from distill_sbs.metrics import svamp as svamp_metrics

PREDICT_PREFIX = 'predict: '
EXPLAIN_PREFIX = 'explain: '
COT_SEPARATOR = ' So the answer is '
SPLITS = paths.SPLITS
LABEL_KINDS = ('label_gold', 'label_llm', 'predict_gold', 'predict_llm')
TASK_KINDS = LABEL_KINDS + ('rationale', 'cot', 'paired_gold', 'paired_llm')
PAIRED_FEATURES = ('inputs', 'targets', 'rationale_inputs', 'rationale_targets')


@gin.configurable
def mixture_alpha(alpha: float = 0.5) -> float:
  """Loss weight α of the label task; mixture rates are α and 1−α."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'mixture_alpha.alpha must be in [0, 1], got {alpha}')
  return float(alpha)


def _label_rate(task=None) -> float:
  del task
  return mixture_alpha()


def _rationale_rate(task=None) -> float:
  del task
  return 1.0 - mixture_alpha()


def cot_target(rationale: str, label: str) -> str:
  return f'{rationale}{COT_SEPARATOR}{label}'


def extract_cot_label(text: str, example: Any = None, is_target: bool = False) -> str:
  """seqio postprocessor: the label after the last COT_SEPARATOR ('' if none)."""
  del example, is_target
  if isinstance(text, bytes):
    text = text.decode('utf-8', errors='replace')
  marker = COT_SEPARATOR.strip()
  if marker not in text:
    return ''
  label = text.rsplit(marker, 1)[1].strip()
  return label[:-1].rstrip() if label.endswith('.') else label


def label_metric_fns(ds: str) -> list[Callable[..., dict]]:
  if ds == 'svamp':
    return [svamp_metrics.equation_accuracy]
  if formats.LABELS.get(ds):
    return [accuracy.nli_accuracy]
  return [accuracy.exact_match]


# --------------------------------------------------------------------------- source

_TEXT_SPEC = {f: tf.io.FixedLenFeature([], tf.string, default_value='')
              for f in schema.TEXT_FIELDS}


def _count_records(files: Sequence[str]) -> int:
  return int(tf.data.TFRecordDataset(list(files)).reduce(
      np.int64(0), lambda n, _: n + 1).numpy())


def _features_for(kind: str, split: str, r: dict[str, tf.Tensor]
                  ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
  """(features, keep) of one parsed record for one task kind and split."""
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


class SbsRecordsSource(seqio.DataSource):
  """Reads `{records_dir}/{split}.tfrecord-*` lazily and maps records to one
  task kind's text features; optional nested train fraction (seed-0)."""

  def __init__(self, ds: str, kind: str, records_dir: Optional[str] = None,
               fraction_pct: Optional[float] = None, fraction_seed: int = 0):
    super().__init__(splits=SPLITS)
    formats.check_dataset(ds)
    if kind not in TASK_KINDS:
      raise ValueError(f'unknown sbs task kind {kind!r}; expected one of {TASK_KINDS}')
    if fraction_pct is not None:
      splits_lib.fraction_size(1, fraction_pct)  # validates the range
    self.ds, self.kind, self.fraction_pct = ds, kind, fraction_pct
    self.fraction_seed = fraction_seed
    self._records_dir = records_dir

  @property
  def records_dir(self) -> str:
    return self._records_dir or paths.dataset_dir(self.ds)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return self._files(split)

  def _files(self, split: str) -> list[str]:
    return schema.split_files(
        self.records_dir, split,
        f'run `python -m distill_sbs.data.prepare --raw_dir ...` or set ${paths.DATA_DIR_ENV}')

  def train_mask(self, files: Sequence[str]) -> np.ndarray:
    """bool [n]: the train records (in file order) this fraction keeps."""
    return splits_lib.fraction_mask(_count_records(files), self.fraction_pct,
                                    self.fraction_seed)

  def get_dataset(self, split: str = 'train', shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length=None, use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del shuffle, seed, sequence_length, use_cached, num_epochs  # Task shuffles.
    if split not in SPLITS:
      raise ValueError(f'unknown split {split!r}; expected one of {SPLITS}')
    files = self._files(split)
    d = tf.data.TFRecordDataset(files)  # sequential: file order is the id order
    if self.fraction_pct is not None and split == 'train':
      mask = tf.constant(self.train_mask(files))
      d = d.enumerate().filter(lambda i, _: tf.gather(mask, i)).map(lambda _, x: x)
    if shard_info is not None and shard_info.num_shards > 1:
      d = d.shard(shard_info.num_shards, shard_info.index)
    kind = self.kind

    def convert(serialized):
      return _features_for(kind, split, tf.io.parse_single_example(
          serialized, _TEXT_SPEC))

    d = d.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return d.filter(lambda _, keep: keep).map(lambda f, _: f)


# ---------------------------------------------------------------- registration

def _paired_eos_and_trim(dataset: tf.data.Dataset, output_features,
                         sequence_length=None) -> tf.data.Dataset:
  """append_eos_after_trim; rationale_* fall back to the inputs/targets lengths."""
  if sequence_length is not None:
    sequence_length = dict(sequence_length)
    sequence_length.setdefault('rationale_inputs', sequence_length.get('inputs'))
    sequence_length.setdefault('rationale_targets', sequence_length.get('targets'))
  return seqio.preprocessors.append_eos_after_trim(
      dataset, output_features=output_features, sequence_length=sequence_length)


def output_features(kind: str, vocabulary: Optional[seqio.Vocabulary] = None
                    ) -> dict[str, seqio.Feature]:
  v = vocabulary or vocab_lib.DEFAULT_VOCABULARY
  names = PAIRED_FEATURES if kind.startswith('paired') else ('inputs', 'targets')
  return {n: seqio.Feature(vocabulary=v, add_eos=True) for n in names}


def _add_task(name: str, source: SbsRecordsSource, kind: str,
              vocabulary: Optional[seqio.Vocabulary]) -> str:
  ds = source.ds
  if kind == 'rationale':
    metric_fns, postprocess = [accuracy.mean_log_likelihood], None
  elif kind == 'cot':
    metric_fns, postprocess = label_metric_fns(ds), extract_cot_label
  elif kind.startswith('paired'):
    metric_fns, postprocess = [], None
  else:
    metric_fns, postprocess = label_metric_fns(ds), None
  eos = (_paired_eos_and_trim if kind.startswith('paired')
         else seqio.preprocessors.append_eos_after_trim)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source, output_features=output_features(kind, vocabulary),
      preprocessors=[seqio.preprocessors.tokenize, eos],
      postprocess_fn=postprocess, metric_fns=metric_fns)
  return name


def _add_mixture(name: str, tasks: Sequence[tuple[str, Callable]]) -> str:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(tasks))
  return name


def register_sbs_tasks(ds: str, *, records_dir: Optional[str] = None,
                       prefix: str = 'sbs',
                       fractions: Sequence[float] = splits_lib.FRACTIONS,
                       vocabulary: Optional[seqio.Vocabulary] = None,
                       fraction_seed: int = 0) -> list[str]:
  """Registers every task and mixture of `ds` as `{prefix}_{ds}_*`.

  Args:
    ds: dataset (formatting and metrics), one of `formats.DATASETS`.
    records_dir: directory holding `{split}.tfrecord-*` in `schema` format
      (e.g. teacher-generated records); None = `paths.data_dir()/{ds}` at read time.
    prefix: name prefix, e.g. 'sbs_palm' for another teacher's records.
    fractions: train-data percentages for the `_{frac}` variants.
    vocabulary: defaults to the lazy project vocabulary.
  Returns:
    the registered names (tasks then mixtures).
  """
  names = []
  for frac in (None, *fractions):
    suffix = '' if frac is None else '_' + splits_lib.fraction_name(frac)
    for kind in TASK_KINDS:
      src = SbsRecordsSource(ds, kind, records_dir, frac, fraction_seed)
      names.append(_add_task(f'{prefix}_{ds}_{kind}{suffix}', src, kind, vocabulary))
    for teacher in ('gold', 'llm'):
      names.append(_add_mixture(f'{prefix}_{ds}_{teacher}{suffix}', [
          (f'{prefix}_{ds}_predict_{teacher}{suffix}', _label_rate),
          (f'{prefix}_{ds}_rationale{suffix}', _rationale_rate)]))
  return names


def manifest(ds: str, records_dir: Optional[str] = None) -> dict[str, Any]:
  """The `manifest.json` written by `prepare` for `ds`."""
  path = os.path.join(records_dir or paths.dataset_dir(ds), paths.MANIFEST)
  with open(path, encoding='utf-8') as f:
    return json.load(f)


for _ds in formats.DATASETS:
  register_sbs_tasks(_ds)
