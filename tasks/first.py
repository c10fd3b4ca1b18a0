"""FIRST SeqIO tasks and mixtures, and rank-classification evaluation tasks.

FIRST (records read at `get_dataset` time, so `$DISTILL_SBS_DATA_DIR` may be set
after import). Per dataset `ds`, from teacher top-k records in
`{data_dir}/first/{ds}/{split}.tfrecord-*` (written by
`generate_rationales --backend=local --out_dir=...` with a teacher that answers
with the label, or by a teacher that scored the label; calibrated with
`python -m distill_sbs.calibrate`):
  first_{ds}_label          input → teacher answer tokens, top-k at every token
  first_{ds}_label_predict  'predict: ' input → the same (mixture component)
  first_{ds}_explain        'explain: ' input → teacher rationale from the
                            prepared records (`sbs_{ds}_rationale`), with a
                            one-hot top-k (KL = CE under the rest bucket)
  first_{ds}_rationale      mixture: label_predict (rate α) + explain (1−α),
                            α = `sbs.mixture_alpha()`: FIRST + step-by-step
plus `_{frac}` data-fraction variants (12p5pct … 100pct, nested, as `sbs`), and
`first_{ds}` (= first_{ds}_label).
Train with `TopKFeatureConverter` and `LOSS_FN = @losses.TopKDistillLoss()`
(gin/methods/first.gin, first_rationale.gin). Other record directories: `register_first_tasks(name, dir)`.
The label tasks' metrics parse the predicted text to a label and compare it with
the record's gold label.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np
import seqio
import tensorflow as tf

from distill_sbs.data import formats
from distill_sbs.data import parsers
from distill_sbs.data import paths
from distill_sbs.data import record_sources
from distill_sbs.data import splits as splits_lib
from distill_sbs.data import topk
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.metrics import choices as choices_lib
from distill_sbs.metrics import rank_classification as rank_lib
from distill_sbs.tasks import sbs

PREFIX = 'first'
EXPLAIN_K = 5


def parse_prediction(ds: str, text, example=None, is_target: bool = False) -> str:
  """seqio postprocessor: targets (gold labels) pass through; predictions are parsed."""
  del example
  if isinstance(text, bytes):
    text = text.decode('utf-8', errors='replace')
  if is_target:
    return text
  parsed = parsers.parse_completion(ds, text)
  if parsed.ok and parsed.label:
    return parsed.label
  label = sbs.extract_cot_label(text)
  return label or text.strip()


def default_records_dir(ds: str, suffix: str = '') -> str:
  return os.path.join(paths.data_dir(), PREFIX, ds + suffix)


def output_features(vocabulary: Optional[seqio.Vocabulary] = None) -> dict[str, seqio.Feature]:
  v = vocabulary or vocab_lib.DEFAULT_VOCABULARY
  # Targets arrive as teacher ids with EOS: `tokenize_inputs_and_trim` only trims them.
  return {'inputs': seqio.Feature(vocabulary=v, add_eos=True),
          'targets': seqio.Feature(vocabulary=v, add_eos=True),
          **topk.topk_output_features()}


def _add_task(name: str, **kwargs) -> str:
  seqio.TaskRegistry.add(name, **kwargs)  # raises on a duplicate name
  return name


def register_first_tasks(name: str, records_dir: Optional[str] = None, *,
                         ds: Optional[str] = None,
                         vocabulary: Optional[seqio.Vocabulary] = None,
                         topk_field: Optional[str] = None,
                         require_vocab_hash: bool = True,
                         input_prefix: str = '',
                         fraction_pct: Optional[float] = None,
                         default_dir_suffix: str = '') -> list[str]:
  """Registers the FIRST task `name` over top-k records.

  Args:
    name: task name.
    records_dir: directory of `{split}.tfrecord-*` with teacher top-k; None =
      `{data_dir}/first/{ds}{default_dir_suffix}` resolved when data is read.
    ds: dataset, for the label metrics (None: no metrics).
    vocabulary: the student vocabulary (default: the project vocabulary); the
      records' `teacher_vocab_hash` must equal its hash.
    topk_field: keep only records whose top-k is aligned to this field.
    input_prefix: prepended to the input text (e.g. 'predict: ').
    fraction_pct: keep this nested percentage of the train records.
  Returns:
    the registered task names.
  """
  if ds is not None:
    formats.check_dataset(ds)
  if records_dir is None and ds is None:
    raise ValueError(f'register_first_tasks({name!r}): give records_dir or ds')
  v = vocabulary or vocab_lib.DEFAULT_VOCABULARY
  source = record_sources.TopKRecordsSource(
      records_dir, vocabulary=v, topk_field=topk_field,
      default_dir=None if records_dir else functools.partial(default_records_dir, ds,
                                                            default_dir_suffix),
      require_vocab_hash=require_vocab_hash, input_prefix=input_prefix,
      fraction_pct=fraction_pct)
  metric_fns, post = [], None
  if ds is not None:
    metric_fns = sbs.label_metric_fns(ds)
    post = functools.partial(parse_prediction, ds)
  return [_add_task(name, source=source, output_features=output_features(v),
                    preprocessors=[topk.tokenize_inputs_and_trim],
                    postprocess_fn=post, metric_fns=metric_fns)]


def register_explain_task(name: str, ds: str, *, fraction_pct: Optional[float] = None,
                          records_dir: Optional[str] = None,
                          vocabulary: Optional[seqio.Vocabulary] = None,
                          k: int = EXPLAIN_K) -> str:
  """'explain: ' input → gold/teacher rationale with one-hot top-k (see module doc)."""
  v = vocabulary or vocab_lib.DEFAULT_VOCABULARY
  return _add_task(
      name,
      source=record_sources.SbsRecordsSource(ds, 'rationale', records_dir, fraction_pct),
      output_features=output_features(v),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim,
                     functools.partial(topk.add_onehot_topk, k=k)],
      metric_fns=[])


def _mixture(name: str, tasks) -> str:
  seqio.MixtureRegistry.add(name, list(tasks))  # raises on a duplicate name
  return name


def _label_rate(task=None) -> float:
  del task
  return sbs.mixture_alpha()


def _explain_rate(task=None) -> float:
  del task
  return 1.0 - sbs.mixture_alpha()


def register_first_dataset(ds: str, *, records_dir: Optional[str] = None,
                           fractions=splits_lib.FRACTIONS) -> list[str]:
  """All FIRST tasks and mixtures of `ds` (see module docstring)."""
  names = []
  for frac in (None, *fractions):
    suffix = '' if frac is None else '_' + splits_lib.fraction_name(frac)
    names += register_first_tasks(f'{PREFIX}_{ds}_label{suffix}', records_dir, ds=ds,
                                  fraction_pct=frac)
    names += register_first_tasks(f'{PREFIX}_{ds}_label_predict{suffix}', records_dir, ds=ds,
                                  input_prefix=sbs.PREDICT_PREFIX, fraction_pct=frac)
    names.append(register_explain_task(f'{PREFIX}_{ds}_explain{suffix}', ds, fraction_pct=frac))
    names.append(_mixture(f'{PREFIX}_{ds}_rationale{suffix}', [
        (f'{PREFIX}_{ds}_label_predict{suffix}', _label_rate),
        (f'{PREFIX}_{ds}_explain{suffix}', _explain_rate)]))
  return names


for _ds in formats.DATASETS:
  register_first_dataset(_ds)
  register_first_tasks(f'{PREFIX}_{_ds}', ds=_ds)  # alias of first_{ds}_label

# ------------------------------------------------------------- rank classification
# `rank_{ds}` / `rank_{ds}_predict` (inputs with the step-by-step 'predict: '
# prefix) for the label datasets: every candidate label becomes one scored row;
# the score metric reports accuracy, ECE, ECE (equal mass), MCE and Brier. Put
# one in the evaluation mixture next to the label task so every student reports
# accuracy and calibration side by side: mixtures `eval_{ds}` (label_gold +
# rank_{ds}) and `eval_{ds}_predict` (predict_gold + rank_{ds}_predict).
RANK_DATASETS = ('cqa', 'esnli', 'anli1')


def _norm(t):
  return tf.strings.lower(tf.strings.strip(t))


def _input_choices(inputs: bytes) -> np.ndarray:
  return np.array([c.encode('utf-8') for c in choices_lib.parse_choices(inputs)], object)


def expand_candidates(dataset: tf.data.Dataset, labels: Optional[tuple] = None
                      ) -> tf.data.Dataset:
  """One row per candidate: inputs, targets (candidate text), idx [example, candidate],
  is_correct. Candidates: `labels`, or the input's choices (CQA, `metrics.choices`)."""

  def fn(i, ex):
    if labels:
      cands = tf.constant(list(labels))
    else:
      cands = tf.numpy_function(_input_choices, [ex['inputs']], tf.string)
      cands.set_shape([None])
    n = tf.shape(cands)[0]
    cand_idx = tf.range(n, dtype=tf.int64)
    return {'inputs': tf.fill([n], ex['inputs']), 'targets': cands,
            'idx': tf.stack([tf.fill([n], tf.cast(i, tf.int64)), cand_idx], axis=1),
            'is_correct': tf.equal(_norm(cands), _norm(ex['targets']))}

  return dataset.enumerate().map(fn).unbatch()


def rank_postprocess(text, example=None, is_target: bool = False):
  """Targets → (example index, candidate index, is_correct); scores pass through."""
  if is_target and example is not None:
    idx = example['idx']
    return int(idx[0]), int(idx[1]), bool(example['is_correct'])
  return text


def register_rank_tasks(ds: str, *, records_dir: Optional[str] = None,
                        vocabulary: Optional[seqio.Vocabulary] = None,
                        num_bins: int = 10, prefix: str = 'rank') -> list[str]:
  """Registers `{prefix}_{ds}` and `{prefix}_{ds}_predict` over the prepared
  gold records (at import: `rank_{ds}`; names are registered once)."""
  formats.check_dataset(ds)
  labels = formats.LABELS.get(ds)
  if labels is None and ds != 'cqa':
    raise ValueError(f'rank classification needs a closed label set; {ds!r} has none')
  names = []
  for kind, suffix in (('label_gold', ''), ('predict_gold', '_predict')):
    name = f'{prefix}_{ds}{suffix}'
    seqio.TaskRegistry.add(
        name, source=record_sources.SbsRecordsSource(ds, kind, records_dir),
        output_features=sbs.output_features('label_gold', vocabulary),
        preprocessors=[functools.partial(expand_candidates, labels=labels),
                       seqio.preprocessors.tokenize,
                       seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=rank_postprocess,
        metric_fns=[functools.partial(rank_lib.rank_classification_metrics,
                                      num_bins=num_bins)])
    names.append(name)
  return names


def register_eval_mixtures(ds: str) -> list[str]:
  """`eval_{ds}` and `eval_{ds}_predict`: generation accuracy + rank calibration."""
  names = []
  for label_task, rank_task, name in (
      (f'sbs_{ds}_label_gold', f'rank_{ds}', f'eval_{ds}'),
      (f'sbs_{ds}_predict_gold', f'rank_{ds}_predict', f'eval_{ds}_predict')):
    names.append(_mixture(name, [(label_task, 1.0), (rank_task, 1.0)]))
  return names


for _ds in RANK_DATASETS:
  register_rank_tasks(_ds)
  register_eval_mixtures(_ds)
