"""Macro values of a gin composition, read as text (nothing imported).

An experiment is a composition of gin files (model size + run + method +
dataset, see gin/runs/cpu.gin) whose macros refer to each other:
`MIXTURE_OR_TASK_NAME = %PAIRED_LLM_TASK` in the method part is resolved by
`PAIRED_LLM_TASK = 'sbs_cqa_paired_llm'` in the dataset part. The sweep needs
those values (the training task, the test task, TRAIN_STEPS) to plan its runs
before any run starts, without importing the configurables the files name, so
this module walks the files with gin's own parser:

  read_macros(['gin/sbs/cqa_tiny.gin'])['MIXTURE_OR_TASK_NAME']
    -> 'sbs_cqa_paired_llm'

`resolve` does the same for a value queried from the live gin config
(`gin.query_parameter` returns `%NAME` references unresolved).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import gin
from gin import config_parser

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class MacroRef:
  """`%NAME` in a parsed value."""

  def __init__(self, name: str):
    self.name = name

  def __repr__(self) -> str:
    return f'%{self.name}'

  def __eq__(self, other) -> bool:
    return isinstance(other, MacroRef) and other.name == self.name

  def __hash__(self) -> int:
    return hash(('%', self.name))


class ConfigurableRef:
  """`@name` or `@name()` in a parsed value (left as is: nothing is imported)."""

  def __init__(self, name: str, evaluate: bool):
    self.name, self.evaluate = name, evaluate

  def __repr__(self) -> str:
    return f'@{self.name}' + ('()' if self.evaluate else '')

  def __eq__(self, other) -> bool:
    return (isinstance(other, ConfigurableRef) and
            (other.name, other.evaluate) == (self.name, self.evaluate))

  def __hash__(self) -> int:
    return hash(('@', self.name, self.evaluate))


class _Delegate(config_parser.ParserDelegate):

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return ConfigurableRef(scoped_configurable_name, evaluate)

  def macro(self, macro_name):
    return MacroRef(macro_name)


def find_gin_file(path: str, search_paths: Sequence[str] = ()) -> str:
  """`path` itself, else the first search path (then the repo root) holding it."""
  if os.path.isabs(path) or os.path.exists(path):
    return path
  for root in (*search_paths, REPO_ROOT):
    candidate = os.path.join(root, path)
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(f'gin file {path!r} not found in {[*search_paths, REPO_ROOT]}')


def _is_macro(statement: config_parser.BindingStatement) -> bool:
  return not statement.arg_name and '.' not in statement.selector


def _read_file(path: str, search_paths: Sequence[str], out: dict[str, Any],
               seen: tuple[str, ...], skip: Sequence[str]) -> None:
  if path in skip:
    return
  path = os.path.abspath(find_gin_file(path, search_paths))
  if path in seen:
    raise ValueError(f'gin include cycle: {" -> ".join((*seen, path))}')
  with open(path, encoding='utf-8') as f:
    parser = config_parser.ConfigParser(f, _Delegate())
    for statement in parser:
      if isinstance(statement, config_parser.IncludeStatement):
        _read_file(statement.filename, search_paths, out, (*seen, path), skip)
      elif isinstance(statement, config_parser.BindingStatement) and _is_macro(statement):
        out[statement.selector] = statement.value


def read_macros(gin_files: Sequence[str], bindings: Sequence[str] = (),
                search_paths: Sequence[str] = (), skip: Sequence[str] = ()
                ) -> dict[str, Any]:
  """Every macro the files (with their includes) and bindings set, resolved.

  Later files and bindings win, as in gin; files named in `skip` (e.g. T5X's
  own run files, not in this repository) are passed over. A macro that refers to one nobody
  sets stays a `MacroRef`; configurable references stay `ConfigurableRef`.
  """
  raw: dict[str, Any] = {}
  for f in gin_files:
    _read_file(f, search_paths, raw, (), skip)
  for b in bindings:
    for statement in config_parser.ConfigParser(b, _Delegate()):
      if isinstance(statement, config_parser.BindingStatement) and _is_macro(statement):
        raw[statement.selector] = statement.value
  return {name: _resolve(value, raw, (name,)) for name, value in raw.items()}


def _resolve(value: Any, raw: Mapping[str, Any], chain: tuple[str, ...]) -> Any:
  if isinstance(value, MacroRef):
    if value.name in chain:
      raise ValueError(f'gin macro cycle: {" -> ".join((*chain, value.name))}')
    if value.name not in raw:
      return value
    return _resolve(raw[value.name], raw, (*chain, value.name))
  if isinstance(value, dict):
    return {k: _resolve(v, raw, chain) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_resolve(v, raw, chain) for v in value)
  return value


def resolve(value: Any) -> Any:
  """A value from `gin.query_parameter` with its `%NAME` references replaced."""
  if isinstance(value, gin.config.ConfigurableReference):
    scope, _, name = value.scoped_selector.rpartition('/')
    if name == 'gin.macro':
      return resolve(gin.query_parameter('%' + scope))
    return value
  if isinstance(value, dict):
    return {k: resolve(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(resolve(v) for v in value)
  return value


def query(selector: str) -> Any:
  """`gin.query_parameter(selector)` with macro references resolved."""
  return resolve(gin.query_parameter(selector))
