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
Mode-token variants `{name}_{nlu,s2s}` (the UL2 mode token before the inputs,
for fine-tuning a UL2R checkpoint) of every whole-data task and mixture.
Registration runs once, at import; names are unique (SeqIO raises on a
duplicate). Another teacher's records: `register_sbs_tasks(ds, prefix=...,
records_dir=...)`. The record source: `data/record_sources.SbsRecordsSource`.

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
import seqio
import tensorflow as tf

from distill_sbs.data import formats
from distill_sbs.data import paths
from distill_sbs.data import record_sources
from distill_sbs.data import splits as splits_lib
from distill_sbs.data import ul2
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.metrics import accuracy
from distill_sbs.metrics import svamp as svamp_metrics

# The record source and the task kinds live in `data/record_sources.py`.
PREDICT_PREFIX = record_sources.PREDICT_PREFIX
EXPLAIN_PREFIX = record_sources.EXPLAIN_PREFIX
COT_SEPARATOR = record_sources.COT_SEPARATOR
SPLITS = paths.SPLITS
LABEL_KINDS = record_sources.LABEL_KINDS
TASK_KINDS = record_sources.TASK_KINDS
PAIRED_FEATURES = ('inputs', 'targets', 'rationale_inputs', 'rationale_targets')
SbsRecordsSource = record_sources.SbsRecordsSource
# Mode-token variants `{name}_{suffix}` (UL2R fine-tuning; see tasks/ul2r.py),
# declared with the whole-data tasks and mixtures of the registered datasets.
MODE_VARIANTS = {'nlu': ul2.NLU, 's2s': ul2.S2S}


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
              vocabulary: Optional[seqio.Vocabulary], mode: Optional[str] = None) -> str:
  """Registers one task (SeqIO raises on a duplicate name); `mode`: the UL2
  mode token prepended to the inputs after tokenization."""
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
  mode_token = [functools.partial(ul2.prepend_mode_token, mode=mode)] if mode else []
  seqio.TaskRegistry.add(
      name, source=source, output_features=output_features(kind, vocabulary),
      preprocessors=[seqio.preprocessors.tokenize, *mode_token, eos],
      postprocess_fn=postprocess, metric_fns=metric_fns)
  return name


def register_sbs_tasks(ds: str, *, records_dir: Optional[str] = None,
                       prefix: str = 'sbs',
                       fractions: Sequence[float] = splits_lib.FRACTIONS,
                       vocabulary: Optional[seqio.Vocabulary] = None,
                       fraction_seed: int = 0,
                       modes: Sequence[str] = ()) -> list[str]:
  """Registers every task and mixture of `ds` as `{prefix}_{ds}_*`, once:
  a name registered before raises (SeqIO's duplicate-provider error).

  Args:
    ds: dataset (formatting and metrics), one of `formats.DATASETS`.
    records_dir: directory holding `{split}.tfrecord-*` in `schema` format
      (e.g. teacher-generated records); None = `paths.data_dir()/{ds}` at read time.
    prefix: name prefix, e.g. 'sbs_palm' for another teacher's records.
    fractions: train-data percentages for the `_{frac}` variants.
    vocabulary: defaults to the lazy project vocabulary.
    modes: keys of `MODE_VARIANTS`: also `{name}_{mode}` for every whole-data
      task and mixture, with the UL2 mode token before the inputs.
  Returns:
    the registered names (tasks then mixtures).
  """
  names = []
  variants = [(None, None)] + [(frac, None) for frac in fractions] + [
      (None, m) for m in modes]
  for frac, mode in variants:
    suffix = ('' if frac is None else '_' + splits_lib.fraction_name(frac)) + (
        f'_{mode}' if mode else '')
    token = MODE_VARIANTS[mode] if mode else None
    for kind in TASK_KINDS:
      src = SbsRecordsSource(ds, kind, records_dir, frac, fraction_seed)
      names.append(_add_task(f'{prefix}_{ds}_{kind}{suffix}', src, kind, vocabulary,
                             token))
    for teacher in ('gold', 'llm'):
      name = f'{prefix}_{ds}_{teacher}{suffix}'
      seqio.MixtureRegistry.add(name, [
          (f'{prefix}_{ds}_predict_{teacher}{suffix}', _label_rate),
          (f'{prefix}_{ds}_rationale{suffix}', _rationale_rate)])
      names.append(name)
  return names


def manifest(ds: str, records_dir: Optional[str] = None) -> dict[str, Any]:
  """The `manifest.json` written by `prepare` for `ds`."""
  path = os.path.join(records_dir or paths.dataset_dir(ds), paths.MANIFEST)
  with open(path, encoding='utf-8') as f:
    return json.load(f)


for _ds in formats.DATASETS:
  register_sbs_tasks(_ds, modes=tuple(MODE_VARIANTS))
