"""A small SeqIO task over the paper's real CQA data, for the training tests.

`test_cqa_32`: the first 32 rows of `cqa_train.json` (inputs formatted by
`distill_sbs.data.formats`, target = the gold answer text) for both train and
validation, so a tiny model can overfit it; metric: exact-match accuracy.
Reads $DISTILL_SBS_RAW_DIR (default ../shared/data/sbs).
"""
import functools
import json
import os
import pathlib
import time

import seqio
import tensorflow as tf

from distill_sbs.data import formats

RAW_DIR = pathlib.Path(os.environ.get(
    'DISTILL_SBS_RAW_DIR',
    pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data' / 'sbs'))
VOCAB = seqio.ByteVocabulary(extra_ids=100)
NUM_ROWS = 32


def _rows(n: int):
  out = []
  with open(RAW_DIR / 'cqa' / 'cqa_train.json', encoding='utf-8') as f:
    for line in f:
      row = json.loads(line)
      out.append((formats.format_input('cqa', row), row['answer']))
      if len(out) == n:
        break
  return out


def _dataset(split, shuffle_files=False, seed=None, n=NUM_ROWS, prefix='', delay=0.0):
  del split, shuffle_files, seed
  rows = _rows(n)
  ds = tf.data.Dataset.from_tensor_slices(
      {'inputs': [prefix + r[0] for r in rows], 'targets': [r[1] for r in rows]})
  if delay:  # a slow source: training steps long enough to be interrupted
    def slow(ex):
      done = tf.py_function(lambda: (time.sleep(delay), 0)[1], [], tf.int32)
      with tf.control_dependencies([done]):
        return {k: tf.identity(v) for k, v in ex.items()}
    ds = ds.map(slow)
  return ds


def exact_match(targets, predictions):
  correct = sum(t.strip() == p.strip() for t, p in zip(targets, predictions))
  return {'exact_match': 100.0 * correct / max(len(targets), 1)}


def register(name: str = 'test_cqa_32', n: int = NUM_ROWS, prefix: str = '',
             delay: float = 0.0) -> str:
  if name in seqio.TaskRegistry.names():
    return name
  features = {k: seqio.Feature(VOCAB, add_eos=True) for k in ('inputs', 'targets')}
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(functools.partial(_dataset, n=n, prefix=prefix,
                                                        delay=delay),
                                      splits=('train', 'validation'),
                                      num_input_examples={'train': n, 'validation': n}),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=features, metric_fns=[exact_match])
  return name


register()
register('test_cqa_32_predict', prefix='predict: ')  # inputs with a task prefix
register('test_cqa_32_slow', delay=0.02)  # ~0.2 s per batch of 8
