"""FIRST SeqIO tasks: inputs → teacher target tokens with the teacher top-k.

Default registrations (records read at `get_dataset` time, so
`$DISTILL_SBS_DATA_DIR` may be set after import):
  first_{ds}      FIRST: records in `{data_dir}/first/{ds}/{split}.tfrecord-*`
                  written by a teacher answering with the label only
                  (`generate_rationales --backend=local --out_dir=...`);
                  targets = the teacher's answer tokens, top-k at every token.
  first_{ds}_cot  FIRST + step-by-step rationales: records in
                  `{data_dir}/first/{ds}_cot` from a chain-of-thought teacher;
                  targets = rationale + answer, top-k at every token.
Other record directories: `register_first_tasks(name, records_dir, ds=...)`.

Train with `TopKFeatureConverter` (gin: `DatasetConfig.feature_converter_cls =
@topk.TopKFeatureConverter`) and `LOSS_FN = @losses.TopKDistillLoss()`.
Metrics: the predicted completion is parsed to a label (the dataset's
completion parser, else the text after 'So the answer is', else the text)
and compared with the gold label of the record.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import seqio

from distill_sbs.data import formats
from distill_sbs.data import parsers
from distill_sbs.data import paths
from distill_sbs.data import topk
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.tasks import sbs

PREFIX = 'first'


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
  # Targets are the teacher's ids, EOS included: no EOS is appended.
  return {'inputs': seqio.Feature(vocabulary=v, add_eos=True),
          'targets': seqio.Feature(vocabulary=v, add_eos=False)}


def register_first_tasks(name: str, records_dir: Optional[str] = None, *,
                         ds: Optional[str] = None,
                         vocabulary: Optional[seqio.Vocabulary] = None,
                         topk_field: Optional[str] = None,
                         require_vocab_hash: bool = True,
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
  Returns:
    the registered task names.
  """
  if ds is not None:
    formats.check_dataset(ds)
  if records_dir is None and ds is None:
    raise ValueError(f'register_first_tasks({name!r}): give records_dir or ds')
  v = vocabulary or vocab_lib.DEFAULT_VOCABULARY
  source = topk.TopKRecordsSource(
      records_dir, vocabulary=v, topk_field=topk_field,
      default_dir=None if records_dir else functools.partial(default_records_dir, ds, default_dir_suffix),
      require_vocab_hash=require_vocab_hash)
  metric_fns, post = [], None
  if ds is not None:
    metric_fns = sbs.label_metric_fns(ds)
    post = functools.partial(parse_prediction, ds)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source, output_features=output_features(v),
      preprocessors=[topk.tokenize_inputs_and_trim],
      postprocess_fn=post, metric_fns=metric_fns)
  return [name]


for _ds in formats.DATASETS:
  register_first_tasks(f'{PREFIX}_{_ds}', ds=_ds)
  register_first_tasks(f'{PREFIX}_{_ds}_cot', ds=_ds, default_dir_suffix='_cot')
