"""Flan-style instruction tasks over the prepared records (registered at import).

  flan_{ds}_zs    zero-shot instruction -> gold answer
  flan_{ds}_fs    k solved exemplars (train split, separators) + query -> answer
  flan_{ds}_cot   chain-of-thought instruction -> '{rationale} So the answer is
                  {answer}.' (teacher rationale; the postprocessor keeps the label)
  flan_{ds}       mixture of the three (equal rates); flan_all: every flan task.
Templates: `tasks/data/flan/{ds}.json` (see `distill_sbs.data.flan`). gin:
`flan_options.seed`, `.fs_k`, `.cot_k` (exemplar counts), `.templates_dir`.
Records are read at `get_dataset` time from `paths.data_dir()/{ds}`.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import gin
import seqio
import tensorflow as tf

from distill_sbs.data import flan
from distill_sbs.data import formats
from distill_sbs.data import paths
from distill_sbs.data import record_sources
from distill_sbs.data import schema
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.tasks import sbs

SPLITS = paths.SPLITS


@gin.configurable
def flan_options(seed: int = 0, fs_k: Optional[int] = None,
                 cot_k: Optional[int] = None,
                 templates_dir: Optional[str] = None) -> dict[str, Any]:
  """Read when a flan dataset is built: template/exemplar seed, shot counts
  (None: the template file's `k`), another template directory."""
  for name, k in (('fs_k', fs_k), ('cot_k', cot_k)):
    if k is not None and k < 0:
      raise ValueError(f'flan_options.{name} must be >= 0, got {k}')
  return {'seed': seed, 'fs': fs_k, 'cot': cot_k, 'templates_dir': templates_dir}


def _records(ds: str, split: str, records_dir: Optional[str]) -> list[dict]:
  root = records_dir or paths.dataset_dir(ds)
  files = schema.split_files(
      root, split, f'run `python -m distill_sbs.data.prepare` or set ${paths.DATA_DIR_ENV}')
  record_sources.verify_shards(root, split, files)
  out = []
  for f in files:
    out.extend(schema.read_records(f))
  return out


def flan_source(ds: str, variant: str,
                records_dir: Optional[str] = None) -> seqio.DataSource:
  """{'id', 'inputs', 'targets', 'template'} texts rendered from the records."""
  formats.check_dataset(ds)
  if variant not in flan.VARIANTS:
    raise ValueError(f'unknown flan variant {variant!r}; expected one of {flan.VARIANTS}')

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
    del shuffle_files, seed  # The Task shuffles examples.
    opts = flan_options()
    tdir = opts['templates_dir']
    spec = flan.load_spec(ds, os.path.join(tdir, f'{ds}.json') if tdir else None)
    k = opts[variant] if variant in ('fs', 'cot') else 0
    if k is None:
      k = spec.variant(variant).k
    records = _records(ds, split, records_dir)
    pool = (records if split == 'train' else _records(ds, 'train', records_dir)
            ) if k else ()
    rows = flan.build_examples(spec, variant, records, pool, seed=opts['seed'],
                               k=k, keep_without_rationale=split != 'train')
    cols = {c: [r[c] for r in rows] for c in ('id', 'inputs', 'targets', 'template')}
    return tf.data.Dataset.from_tensor_slices(
        {c: tf.constant(v, tf.string, shape=[len(v)]) for c, v in cols.items()})
  return seqio.FunctionDataSource(dataset_fn, splits=SPLITS)


def register_flan_tasks(ds: str, *, records_dir: Optional[str] = None,
                        prefix: str = 'flan',
                        vocabulary: Optional[seqio.Vocabulary] = None) -> list[str]:
  """Registers `{prefix}_{ds}_{zs,fs,cot}` and the mixture `{prefix}_{ds}`."""
  v = vocabulary or vocab_lib.DEFAULT_VOCABULARY
  features = {n: seqio.Feature(vocabulary=v, add_eos=True)
              for n in ('inputs', 'targets')}
  names = []
  for variant in flan.VARIANTS:
    name = f'{prefix}_{ds}_{variant}'
    seqio.TaskRegistry.add(
        name, source=flan_source(ds, variant, records_dir),
        output_features=features,
        preprocessors=[seqio.preprocessors.tokenize,
                       seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=sbs.extract_cot_label if variant == 'cot' else None,
        metric_fns=sbs.label_metric_fns(ds))
    names.append(name)
  seqio.MixtureRegistry.add(f'{prefix}_{ds}', [(n, 1.0) for n in names])
  return names + [f'{prefix}_{ds}']


def register_all() -> list[str]:
  names = []
  for ds in formats.DATASETS:
    names += register_flan_tasks(ds)
  tasks = [n for n in names if n.endswith(tuple('_' + v for v in flan.VARIANTS))]
  seqio.MixtureRegistry.add('flan_all', [(n, 1.0) for n in tasks])
  return names + ['flan_all']


register_all()
