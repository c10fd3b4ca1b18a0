"""UL2R tasks: mixture-of-denoisers continued pre-training over text sources.

Registered at import:
  ul2r_{ds}_corpus    the prepared records' `inputs` and `rationale` texts of
                      one dataset (`{data_dir}/{ds}/{split}.tfrecord-*`),
  ul2r_sbs_corpus     a mixture of the four (equal rates),
  ul2r_cqa_corpus     (one of the above; the tiny/small/base gin runs use it),
  ul2r_{name}         for every `name=path` in `$DISTILL_SBS_UL2R_TEXT`
                      (comma-separated), via `register_ul2r_text_task`.
Mode-token fine-tuning variants `{name}_{nlu,s2s}` of the `sbs_*` tasks and
mixtures are declared with them (`sbs.MODE_VARIANTS`); other names or modes:
`register_mode_token_variant(name, mode)`. Every name is registered once.

Any seqio text source: `register_ul2r_task(name, source, text_key=...)`.
A plain text (one document per line) or JSON Lines file (`text_key` field):
`register_ul2r_text_task(name, path_or_glob)`, or in gin
`MIXTURE_OR_TASK_NAME = @ul2r_text_task()` with
`ul2r_text_task.name = 'mine'` and `ul2r_text_task.path = '/data/mine.jsonl'`.
"""
from __future__ import annotations

import functools
import json
import os
import random
from typing import Iterator, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from distill_sbs.data import formats
from distill_sbs.data import paths
from distill_sbs.data import record_sources
from distill_sbs.data import schema
from distill_sbs.data import ul2
from distill_sbs.data import vocab as vocab_lib

TEXT_ENV = 'DISTILL_SBS_UL2R_TEXT'
CORPUS_FIELDS = ('inputs', 'rationale')
SPLITS = paths.SPLITS
MODE_SUFFIXES = {'nlu': ul2.NLU, 'nlg': ul2.NLG, 's2s': ul2.S2S}


def output_features(vocabulary: Optional[seqio.Vocabulary] = None
                    ) -> dict[str, seqio.Feature]:
  v = vocabulary or vocab_lib.default_vocabulary()
  return {'inputs': seqio.Feature(v, add_eos=True, required=False),
          'targets': seqio.Feature(v, add_eos=True)}


def task_name(name: str) -> str:
  return name if name.startswith('ul2r_') else f'ul2r_{name}'


_GIN = 'gin'  # preset left to gin's `ul2r_objective.preset` (default 'ul2r')


def register_ul2r_task(name: str, source: seqio.DataSource, *,
                       text_key: str = 'text',
                       vocabulary: Optional[seqio.Vocabulary] = None,
                       preset: Optional[str] = _GIN) -> seqio.Task:
  """`ul2r_{name}` over any seqio source whose examples have a `text_key` string.

  `preset`: 'ul2r' (U-PaLM rates), 'ul2' (UL2's), None (the gin-configured
  `ul2.make_denoisers` rates); by default it is left to gin
  (`ul2.ul2r_objective.preset`, default 'ul2r').
  """
  full = task_name(name)
  objective = (ul2.ul2r_objective if preset == _GIN else
               functools.partial(ul2.ul2r_objective, preset=preset))
  return seqio.TaskRegistry.add(
      full,
      source=source,
      preprocessors=[
          functools.partial(seqio.preprocessors.rekey,
                            key_map={'targets': text_key}),
          seqio.preprocessors.tokenize,
          objective,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=output_features(vocabulary),
      metric_fns=[])


# ---------------------------------------------------------------- text files


def _read_lines(path: str, text_key: Optional[str]) -> Iterator[str]:
  """Documents of one file: lines, or `text_key` of each JSON line."""
  with tf.io.gfile.GFile(path, 'r') as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      if text_key is None:
        yield line.rstrip('\n')
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{lineno}: malformed JSON line ({e.msg})') from None
      if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
        raise ValueError(f'{path}:{lineno}: expected an object with a string '
                         f'field {text_key!r}')
      yield obj[text_key]


def _is_jsonl(path: str) -> bool:
  return path.endswith(('.jsonl', '.json', '.jsonl.gz'))


def text_file_source(path: str, text_key: str = 'text',
                     splits: Sequence[str] = ('train',)) -> seqio.DataSource:
  """A source of {'text': ...} from plain text or JSON Lines file(s) (glob).

  `path` may hold `{split}` to name one file pattern per split.
  """
  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
    pattern = path.format(split=split) if '{split}' in path else path
    files = sorted(tf.io.gfile.glob(os.path.expanduser(pattern)))
    if not files:
      raise FileNotFoundError(f'UL2R text source: no file matches {pattern!r}')
    if shuffle_files:
      random.Random(seed).shuffle(files)

    def gen():
      for f in files:
        yield from _read_lines(f, text_key if _is_jsonl(f) else None)
    return tf.data.Dataset.from_generator(
        gen, output_signature=tf.TensorSpec([], tf.string)).map(
            _as_text_example)
  return seqio.FunctionDataSource(dataset_fn, splits=splits)


def _as_text_example(text):
  return {'text': text}


def register_ul2r_text_task(name: str, path: str, *, text_key: str = 'text',
                            splits: Sequence[str] = ('train',),
                            vocabulary: Optional[seqio.Vocabulary] = None,
                            preset: Optional[str] = _GIN) -> seqio.Task:
  """`ul2r_{name}` over a plain text (line per document) or JSON Lines file."""
  if not tf.io.gfile.glob(os.path.expanduser(path.replace('{split}', '*'))):
    raise FileNotFoundError(f'register_ul2r_text_task({name!r}): no file matches '
                            f'{path!r}')
  return register_ul2r_task(name, text_file_source(path, text_key, splits),
                            vocabulary=vocabulary, preset=preset)


_GIN_TEXT_TASKS: dict[str, tuple] = {}  # task name -> the hook's arguments


@gin.configurable
def ul2r_text_task(name: str = gin.REQUIRED, path: str = gin.REQUIRED,
                   text_key: str = 'text', preset: Optional[str] = _GIN) -> str:
  """gin hook: registers `ul2r_{name}` over `path` (once: gin may evaluate the
  reference again with the same arguments), returns the task name."""
  full, args = task_name(name), (path, text_key, preset)
  if _GIN_TEXT_TASKS.get(full) == args:
    return full
  task = register_ul2r_text_task(name, path, text_key=text_key, preset=preset)
  _GIN_TEXT_TASKS[full] = args
  return task.name


def register_from_env(env: Optional[str] = None) -> list[str]:
  """Registers `name=path` pairs from `$DISTILL_SBS_UL2R_TEXT` (comma list)."""
  spec = os.environ.get(TEXT_ENV, '') if env is None else env
  names = []
  for item in filter(None, (s.strip() for s in spec.split(','))):
    if '=' not in item:
      raise ValueError(f'${TEXT_ENV}: expected name=path, got {item!r}')
    name, path = item.split('=', 1)
    names.append(register_ul2r_text_task(name.strip(), path.strip()).name)
  return names


# ---------------------------------------------------------- prepared records


def corpus_source(datasets: Sequence[str],
                  fields: Sequence[str] = CORPUS_FIELDS) -> seqio.DataSource:
  """{'text': ...} from the prepared records' `fields` (empty texts skipped)."""
  for ds in datasets:
    formats.check_dataset(ds)
  desc = {f: tf.io.FixedLenFeature([], tf.string, default_value='')
          for f in fields}

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
    files = []
    for ds in datasets:
      found = schema.split_files(paths.dataset_dir(ds), split,
                                 'UL2R corpus: run python -m distill_sbs.data.prepare first')
      record_sources.verify_shards(paths.dataset_dir(ds), split, found)
      files += found
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
      files_ds = files_ds.shuffle(len(files), seed=seed)

    def texts(serialized):
      ex = tf.io.parse_single_example(serialized, desc)
      return tf.data.Dataset.from_tensor_slices(tf.stack([ex[f] for f in fields]))

    def non_empty(t):
      return tf.strings.length(t) > 0
    return (tf.data.TFRecordDataset(files_ds).flat_map(texts)
            .filter(non_empty).map(_as_text_example))
  return seqio.FunctionDataSource(dataset_fn, splits=SPLITS)


def register_corpus_tasks() -> list[str]:
  names = []
  for ds in formats.DATASETS:
    names.append(register_ul2r_task(f'{ds}_corpus', corpus_source([ds])).name)
  seqio.MixtureRegistry.add('ul2r_sbs_corpus', [(n, 1.0) for n in names])
  return names + ['ul2r_sbs_corpus']


# ------------------------------------------------------- mode-token variants


def _insert_mode(preprocessors, mode: str):
  """Puts `prepend_mode_token(mode)` right after tokenization."""
  out, done = [], False
  for p in preprocessors:
    out.append(p)
    name = getattr(getattr(p, 'func', p), '__name__', '')
    if not done and name in ('tokenize', 'tokenize_and_append_eos'):
      out.append(functools.partial(ul2.prepend_mode_token, mode=mode))
      done = True
  if not done:
    raise ValueError('task has no seqio tokenize preprocessor to put the mode '
                     'token after')
  return out


def _component_variant(name: str, suffix: str, mode: str) -> str:
  """A mixture component's variant: made by an earlier call (mixtures share
  components, e.g. the rationale task) or registered now."""
  new = f'{name}_{suffix}'
  if new in seqio.TaskRegistry.names() or new in seqio.MixtureRegistry.names():
    return new
  return register_mode_token_variant(name, mode)


def register_mode_token_variant(name: str, mode: str) -> str:
  """`{name}_{nlu|nlg|s2s}`: registered task (or mixture) `name` with the mode
  token, for names and modes the declared variants (`sbs.MODE_VARIANTS`, made
  with the `sbs_*` tasks) do not cover. A mixture's variant mixes the variants
  of its tasks at the same rates. Each variant is registered once.
  """
  suffix = {v: k for k, v in MODE_SUFFIXES.items()}.get(mode)
  if suffix is None:
    raise ValueError(f'unknown mode token {mode!r}; expected one of {ul2.MODE_TOKENS}')
  new = f'{name}_{suffix}'
  if name in seqio.MixtureRegistry.names():
    mix = seqio.get_mixture_or_task(name)
    # Keep callable rates (e.g. sbs's gin α) callable: seqio's rate table.
    rates = getattr(mix, '_task_to_rate', {})
    parts = [(_component_variant(t.name, suffix, mode),
              rates.get(t.name, mix.get_rate(t))) for t in mix.tasks]
    seqio.MixtureRegistry.add(new, parts)
    return new
  task = seqio.get_mixture_or_task(name)
  seqio.TaskRegistry.add(
      new, source=task.source,
      preprocessors=_insert_mode(task.preprocessors, mode),
      output_features=task.output_features,
      postprocess_fn=task.postprocessor,
      # The constructor's metric lists (seqio keeps them lazily).
      metric_fns=list(task._metric_fn_constructor_args),  # pylint: disable=protected-access
      metric_objs=list(task._metric_objs_constructor_args),  # pylint: disable=protected-access
      shuffle_buffer_size=task.shuffle_buffer_size)
  return new


register_corpus_tasks()
register_from_env()
