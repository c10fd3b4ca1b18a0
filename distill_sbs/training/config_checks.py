"""Configuration checks that run before the first training step.

* `check_macro_bindings`: a command-line macro (`--gin.NAME=` / `--gin_bindings`)
  that nothing references (and no file defines) fails naming the closest
  existing macro; one whose value has a different type than the gin files give
  it fails naming it.
* `check_paired_batch`: a paired step-by-step task needs an even per-host batch
  (each example is a label row and a rationale row).
* `check_lengths`: how many of the first N examples each feature length would
  truncate; a target that would be cut (lose its end / EOS) or an input that
  would lose its task prefix fails unless `allow_truncation`.
* `check_hf_config`: a Hugging Face `config.json` against the model gin's
  `T5Config` (or `DecoderOnlyConfig`: shape and special ids), field by field.
* `check_resume_config`: a resume whose model shape (the `T5Config` bindings)
  differs from the run's recorded `config.gin` fails listing the bindings.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Any, Mapping, Optional, Sequence

import gin
import numpy as np
from absl import logging
from gin import config_parser

from distill_sbs.training import gin_macros


class ConfigError(ValueError):
  """A configuration mistake found before training."""


# ------------------------------------------------------------------ macros
def _macro_refs(value: Any, out: set[str]) -> None:
  if isinstance(value, gin.config.ConfigurableReference):
    scope, _, name = value.scoped_selector.rpartition('/')
    if name == 'gin.macro':
      out.add(scope)
  elif isinstance(value, Mapping):
    for v in value.values():
      _macro_refs(v, out)
  elif isinstance(value, (list, tuple, set)):
    for v in value:
      _macro_refs(v, out)


def live_macros() -> tuple[set[str], set[str]]:
  """(macros bound, macros referenced) in the parsed gin config."""
  bound, referenced = set(), set()
  for (scope, selector), params in list(gin.config._CONFIG.items()):  # pylint: disable=protected-access
    if selector == 'gin.macro' and scope:
      bound.add(scope)
    for v in params.values():
      _macro_refs(v, referenced)
  return bound, referenced


def binding_macros(bindings: Sequence[str]) -> dict[str, Any]:
  """Macro name -> parsed value of the macro bindings among `bindings`."""
  out = {}
  for b in bindings:
    for st in config_parser.ConfigParser(b, gin_macros._Delegate()):  # pylint: disable=protected-access
      if (isinstance(st, config_parser.BindingStatement) and not st.arg_name
          and '.' not in st.selector):
        out[st.selector] = st.value
  return out


def _kind(value: Any) -> Optional[str]:
  """A coarse type name for comparing a binding with the files' value."""
  if value is None or isinstance(value, (gin_macros.MacroRef, gin_macros.ConfigurableRef)):
    return None
  if isinstance(value, bool):
    return 'bool'
  if isinstance(value, (int, float)):
    return 'number'
  if isinstance(value, str):
    return None if value.strip() == '%gin.REQUIRED' else 'str'
  if isinstance(value, Mapping):
    return 'dict'
  if isinstance(value, (list, tuple)):
    return 'sequence'
  return None  # configurable references, %gin.REQUIRED, other objects: not compared


# Macros that must be given by a run and have a known type.
_KNOWN = {'TRAIN_STEPS': 'number', 'BATCH_SIZE': 'number', 'MODEL_DIR': 'str',
          'TASK_FEATURE_LENGTHS': 'dict', 'LEARNING_RATE': 'number',
          'MIXTURE_OR_TASK_NAME': 'str'}


def check_macro_bindings(bindings: Sequence[str], gin_files: Sequence[str] = (),
                         search_paths: Sequence[str] = ()) -> None:
  """Raises `ConfigError` for a command-line macro that nothing references and
  no gin file defines (a typo), or whose type differs from the files' value.

  A macro the files define but this composition does not use (a sweep's
  dataset lengths for a method without rationales) passes."""
  given = binding_macros(bindings)
  try:
    in_files = gin_macros.read_macros(gin_files, search_paths=search_paths) if gin_files else {}
  except Exception:  # pylint: disable=broad-except
    in_files = None  # unreadable as text: no unknown-macro check
  bound, referenced = live_macros()
  errors = []
  for name in given:
    if in_files is not None and name not in referenced and name not in in_files:
      close = (difflib.get_close_matches(name, sorted(referenced), n=1, cutoff=0.6)
               or difflib.get_close_matches(name, sorted(bound - {name}), n=1, cutoff=0.6))
      hint = f'; did you mean {close[0]}?' if close else ''
      errors.append(f'gin macro {name} is set on the command line but nothing in the gin '
                    f'files references it (%{name}){hint}')
  in_files = in_files or {}
  for name, want in _KNOWN.items():  # the run's own macros, wherever they are set
    if name in given:
      continue
    try:
      value = gin_macros.query(f'%{name}')
    except (ValueError, KeyError):
      continue
    got = _kind(value)
    if got and got != want:
      errors.append(f'gin macro {name} = {value!r} (set in the gin files) is a {got}, but '
                    f'{name} must be a {want}')
  for name, value in given.items():
    got = _kind(gin_macros._resolve(value, {**in_files, **given}, (name,)))  # pylint: disable=protected-access
    want = _kind(in_files.get(name)) or _KNOWN.get(name)
    if got and want and got != want:
      errors.append(f'gin macro {name} = {value!r} is a {got}, but {name} must be a {want}'
                    + (f' (the gin files set {in_files[name]!r})'
                       if _kind(in_files.get(name)) else ''))
    if name == 'TASK_FEATURE_LENGTHS' and isinstance(value, Mapping):
      bad = {k: v for k, v in value.items()
             if not isinstance(v, int) or isinstance(v, bool) or v <= 0}
      if bad:
        errors.append(f'gin macro TASK_FEATURE_LENGTHS: lengths must be positive ints, '
                      f'got {bad}')
  if errors:
    raise ConfigError('\n'.join(errors))


# ------------------------------------------------------------ paired batch
def check_paired_batch(task_name: str, batch_size: Any, process_count: int,
                       pack: bool = False) -> None:
  """A '_paired_' task needs an even per-host batch (label + rationale rows)."""
  if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
    raise ConfigError(f'BATCH_SIZE must be a positive int, got {batch_size!r}')
  if batch_size % process_count:
    raise ConfigError(f'BATCH_SIZE={batch_size} is not divisible by the {process_count} '
                      'processes')
  local = batch_size // process_count
  if '_paired_' in str(task_name) and not pack and local % 2:
    raise ConfigError(
        f'BATCH_SIZE={batch_size} gives {local} rows per host; the paired task '
        f'{task_name!r} needs an even number (each example is a label row and a '
        'rationale row, and an odd batch trains label-only or rationale-only rows)')


# ------------------------------------------------------------------ lengths
_LENGTH_OF = {'rationale_inputs': 'inputs', 'rationale_targets': 'targets'}


def _common_prefix(seqs: Sequence[np.ndarray]) -> int:
  if len(seqs) < 2:
    return 0
  n = min(len(s) for s in seqs)
  first = seqs[0]
  for i in range(n):
    if any(s[i] != first[i] for s in seqs[1:]):
      return i
  return n


def length_report(examples: Sequence[Mapping[str, np.ndarray]],
                  lengths: Mapping[str, int]) -> dict[str, dict[str, int]]:
  """Per feature: {'truncated': n, 'lost_prefix': n, 'length': L, 'prefix': P}."""
  report = {}
  features = sorted({k for ex in examples for k in ex})
  for feat in features:
    limit = lengths.get(feat, lengths.get(_LENGTH_OF.get(feat, ''), None))
    if limit is None:
      continue
    seqs = [np.asarray(ex[feat]) for ex in examples if feat in ex]
    seqs = [s for s in seqs if s.ndim == 1]
    if not seqs:
      continue
    prefix = _common_prefix(seqs) if 'inputs' in feat else 0
    report[feat] = {'length': int(limit), 'examples': len(seqs),
                    'truncated': sum(len(s) > limit for s in seqs),
                    'prefix': prefix,
                    'lost_prefix': sum(1 for _ in seqs) if prefix > limit else 0}
  return report


def _task_examples(task_name: str, split: str, num_examples: int,
                   use_cached: bool) -> dict[str, list]:
  """Up to `num_examples` untrimmed examples of every task of a mixture."""
  import seqio  # pylint: disable=g-import-not-at-top
  task_or_mix = seqio.get_mixture_or_task(task_name)
  tasks = getattr(task_or_mix, 'tasks', None) or [task_or_mix]
  out = {}
  for task in tasks:
    try:
      ds = task.get_dataset(sequence_length=None, split=split, shuffle=False,
                            num_epochs=1, use_cached=use_cached)
      out[task.name] = list(ds.take(num_examples).as_numpy_iterator())
    except Exception as e:  # pylint: disable=broad-except
      # e.g. denoising tasks that need a sequence length: nothing to measure.
      logging.warning('length check: skipped task %s (%s)', task.name, e)
  return out


def check_lengths(task_name: str, lengths: Mapping[str, int], *, split: str = 'train',
                  num_examples: int = 1000, allow_truncation: bool = False,
                  use_cached: bool = False, report=print) -> dict[str, dict]:
  """Counts truncation over the first `num_examples` of each task; raises
  `ConfigError` when a target would be cut or an input lose its task prefix."""
  if not num_examples or not lengths:
    return {}
  reports, errors = {}, []
  for name, examples in _task_examples(task_name, split, num_examples, use_cached).items():
    rep = length_report(examples, lengths)
    reports[name] = rep
    for feat, r in rep.items():
      if not r['truncated']:
        continue
      msg = (f'{name}: {r["truncated"]} of the first {r["examples"]} examples have '
             f'{feat} longer than {r["length"]} tokens')
      if 'targets' in feat:
        errors.append(msg + ' (they would lose their end and EOS)')
      elif r['lost_prefix']:
        errors.append(msg + f' and the length cuts their {r["prefix"]}-token task prefix')
      else:
        report(f'length check: {msg} (cut at the end)')
  if errors and not allow_truncation:
    raise ConfigError(
        'TASK_FEATURE_LENGTHS would truncate training examples:\n  ' + '\n  '.join(errors)
        + '\nraise the lengths, or set ALLOW_TRUNCATION = True '
        '(train_loop.train.allow_truncation) to train on truncated examples')
  for e in errors:
    report(f'length check (allow_truncation): {e}')
  return reports


# ------------------------------------------------------ Hugging Face config
HF_FIELDS = ('num_encoder_layers', 'num_decoder_layers', 'num_heads', 'head_dim',
             'emb_dim', 'mlp_dim', 'mlp_activations', 'vocab_size',
             'relative_attention_num_buckets', 'relative_attention_max_distance')


# The shape fields of a decoder-only model gin (`DecoderOnlyConfig`) that its
# Hugging Face config.json must match.
DECODER_ONLY_HF_FIELDS = ('model_type', 'vocab_size', 'emb_dim', 'num_heads', 'num_kv_heads',
                          'num_layers', 'head_dim', 'mlp_dim', 'mlp_activation', 'qk_norm',
                          'norm_plus_one', 'post_norms', 'qkv_bias', 'out_bias',
                          'logits_via_embedding', 'layer_types', 'sliding_window')


# Special ids a decoder-only model gin must share with the checkpoint: decoding
# stops at `eos_ids`, while the tasks' vocabulary (the checkpoint's
# tokenizer.json) appends the checkpoint's EOS (not shape: resumes ignore them).
DECODER_ONLY_ID_FIELDS = ('eos_ids', 'pad_id', 'bos_id')


def check_hf_config(path: str, config: Any) -> None:
  """Raises `ConfigError` listing every field where `path`'s config.json and
  the model gin's `T5Config` (or `DecoderOnlyConfig`) differ (a tied HF head
  loads into an untied gin)."""
  cfg_path = os.path.join(path, 'config.json')
  if not os.path.isfile(cfg_path):
    return
  from distill_sbs.models import hf_io  # pylint: disable=g-import-not-at-top
  with open(cfg_path, encoding='utf-8') as f:
    hf_cfg = json.load(f)
  if hasattr(config, 'num_kv_heads'):  # a decoder-only model gin
    from distill_sbs.models import decoder_only_hf  # pylint: disable=g-import-not-at-top
    hf = decoder_only_hf.config_from_hf(hf_cfg, cfg_path)
    diffs = [f'{f}: {getattr(hf, f)!r} in config.json, {getattr(config, f)!r} in the model gin'
             for f in DECODER_ONLY_HF_FIELDS + DECODER_ONLY_ID_FIELDS
             if getattr(hf, f) != getattr(config, f)]
    if diffs:
      raise ConfigError(f'{cfg_path} does not match the model gin (DecoderOnlyConfig):\n  '
                        + '\n  '.join(diffs))
    return
  hf = hf_io.config_from_hf(hf_cfg, cfg_path)
  diffs = []
  for field in HF_FIELDS:
    a, b = getattr(hf, field), getattr(config, field)
    if field == 'mlp_activations':
      a, b = tuple(a), tuple(b)
    if a != b:
      diffs.append(f'{field}: {a!r} in config.json, {b!r} in the model gin')
  tied = hf_cfg.get('tie_word_embeddings', True)
  if config.logits_via_embedding and not tied:
    diffs.append('tied head: config.json has an untied lm_head (tie_word_embeddings='
                 'false), the model gin ties it (logits_via_embedding = True)')
  if diffs:
    raise ConfigError(f'{cfg_path} does not match the model gin (T5Config):\n  '
                      + '\n  '.join(diffs))


# ------------------------------------------------------------ resume config
SHAPE_FIELDS = HF_FIELDS + ('logits_via_embedding',)
SHAPE_CONFIGS = {'T5Config': SHAPE_FIELDS, 'DecoderOnlyConfig': DECODER_ONLY_HF_FIELDS}


def model_shape_bindings(text: str) -> dict[str, Any]:
  """'T5Config.<field>' (or 'DecoderOnlyConfig.<field>') -> value (macros
  resolved) of a gin config's text."""
  macros, found = {}, {}
  for st in config_parser.ConfigParser(text, gin_macros._Delegate()):  # pylint: disable=protected-access
    if not isinstance(st, config_parser.BindingStatement):
      continue
    if not st.arg_name and '.' not in st.selector:
      macros[st.selector] = st.value
    elif st.arg_name in SHAPE_CONFIGS.get(st.selector.rsplit('.', 1)[-1], ()):
      name = st.selector.rsplit('.', 1)[-1]
      key = (f'{st.scope}/' if st.scope else '') + f'{name}.{st.arg_name}'
      found[key] = st.value
  return {k: gin_macros._resolve(v, macros, ()) for k, v in found.items()}  # pylint: disable=protected-access


def check_resume_config(recorded_path: str, current_text: str) -> None:
  """Raises `ConfigError` when the model shape differs from `recorded_path`'s."""
  with open(recorded_path, encoding='utf-8') as f:
    old = model_shape_bindings(f.read())
  new = model_shape_bindings(current_text)
  diffs = [f'{k} = {old.get(k, "(default)")!r} in {recorded_path}, now {new.get(k, "(default)")!r}'
           for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  if diffs:
    raise ConfigError(
        'this run has checkpoints of another model shape; resuming would fail:\n  '
        + '\n  '.join(diffs) + '\nuse the recorded configuration or another MODEL_DIR')
