"""Gin + absl flags as T5X's `gin_utils`: `--gin_file` (repeatable),
`--gin_bindings`, `--gin.NAME=value`, `--gin_search_paths`; required macros;
the resolved config written to `MODEL_DIR/config.gin`.
"""
from __future__ import annotations

import ast
import importlib
import os
from typing import Callable, Optional, Sequence

import gin
from absl import app
from absl import flags

from distill_sbs.training import config_checks

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_FLAGS_DEFINED = False


def define_flags() -> None:
  """Defines the gin and multi-host flags once."""
  global _FLAGS_DEFINED
  if _FLAGS_DEFINED or 'gin_file' in flags.FLAGS:
    _FLAGS_DEFINED = True
    return
  flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s); repeatable.')
  flags.DEFINE_multi_string('gin_bindings', [], 'Individual gin bindings.')
  flags.DEFINE_list('gin_search_paths', ['.'],
                    'Comma-separated directories searched for gin files and includes '
                    '(the repository root is always searched last).')
  flags.DEFINE_string('coordinator_address', None,
                      "Multi-host: jax.distributed coordinator 'host:port' (or 'auto').")
  flags.DEFINE_integer('process_count', None, 'Multi-host: number of processes.')
  flags.DEFINE_integer('process_index', None, 'Multi-host: index of this process.')
  flags.DEFINE_string('cpu_collectives', None,
                      "Multi-host on CPU: collectives implementation ('gloo').")
  _FLAGS_DEFINED = True


def _gin_value(value: str) -> str:
  """Leaves gin syntax alone; bare words like runs/x become quoted strings."""
  v = value.strip()
  if not v or v[0] in '@%([{\'"' or v in ('True', 'False', 'None'):
    return v
  try:
    ast.literal_eval(v)
    return v
  except (ValueError, SyntaxError):
    return repr(v)


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """`--gin.NAME=VALUE` → `--gin_bindings=NAME = VALUE` (T5X's shorthand)."""
  out = []
  for arg in args:
    if arg.startswith('--gin.'):
      if '=' not in arg:
        raise ValueError(f'gin flag {arg!r} must look like --gin.NAME=VALUE')
      name, value = arg[len('--gin.'):].split('=', 1)
      out.append(f'--gin_bindings={name} = {_gin_value(value)}')
    else:
      out.append(arg)
  return out


def _is_required(value) -> bool:
  return str(value).strip() == '%gin.REQUIRED'


def _macro_names() -> list[str]:
  names = []
  for (scope, selector) in list(gin.config._CONFIG):  # pylint: disable=protected-access
    if selector.endswith('macro') and scope:
      names.append(scope)
  return names


def check_required_macros(names: Optional[Sequence[str]] = None) -> None:
  """Raises naming every macro still bound to `%gin.REQUIRED`."""
  missing = []
  for name in names if names is not None else _macro_names():
    try:
      value = gin.query_parameter(f'%{name}')
    except ValueError:
      continue
    if _is_required(value):
      missing.append(name)
  missing = sorted(set(missing))
  if missing:
    hint = ' '.join(f'--gin.{n}=...' for n in missing)
    raise config_checks.ConfigError(f'required gin macro(s) not set: {", ".join(missing)} '
                     f'(pass e.g. {hint})')


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
              gin_search_paths: Sequence[str] = ('.',), check_required: bool = True
              ) -> tuple[list[str], list[str]]:
  """Parses files + bindings (bindings win), then checks required macros;
  returns (the files found, the search paths)."""
  paths = [os.path.abspath(p) for p in gin_search_paths] + [REPO_ROOT]
  for p in paths:
    gin.add_config_file_search_path(p)
  if not gin_files:
    raise ValueError('at least one --gin_file is required')
  files = []
  for f in gin_files:
    if os.path.exists(f):
      files.append(f)
      continue
    found = [os.path.join(p, f) for p in paths if os.path.exists(os.path.join(p, f))]
    if not found:
      raise FileNotFoundError(f'gin file {f!r} not found in {paths}')
    files.append(found[0])
  gin.parse_config_files_and_bindings(files, list(gin_bindings), finalize_config=False)
  if check_required:
    check_required_macros()
  return files, paths


def parse_gin_flags(check_required: bool = True) -> None:
  """`parse_gin` of the flags; a command-line macro that nothing references or
  whose type differs from the files' fails (`config_checks.check_macro_bindings`)."""
  f = flags.FLAGS
  files, paths = parse_gin(f.gin_file, f.gin_bindings, f.gin_search_paths, False)
  config_checks.check_macro_bindings(f.gin_bindings, files, paths)
  if check_required:
    check_required_macros()


def write_config(model_dir: str, name: str = 'config.gin') -> Optional[str]:
  """Writes the parsed config (all bindings) to MODEL_DIR/config.gin (process 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return None
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, name)
  with open(path, 'w', encoding='utf-8') as fh:
    fh.write(gin.config_str())
  return path


def initialize_distributed_from_flags() -> None:
  from distill_sbs.training import partitioning  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if f.coordinator_address:
    partitioning.initialize_distributed(
        coordinator_address=f.coordinator_address, num_processes=f.process_count,
        process_id=f.process_index, cpu_collectives=f.cpu_collectives)
  else:
    gin.get_configurable(partitioning.initialize_distributed)()


def run(main: Callable[[Sequence[str]], None], argv: Optional[Sequence[str]] = None
        ) -> None:
  """`absl.app.run` with the `--gin.NAME=value` rewriting."""
  define_flags()

  def parse(args):
    rest = flags.FLAGS(rewrite_gin_args(args))
    if not any(a.startswith(('--verbosity', '-v=', '--v=')) for a in args):
      # Orbax / seqio are chatty at INFO; keep the terminal to the progress bar.
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.set_verbosity(logging.WARNING)
    return rest

  def guarded(args):
    try:
      return main(args)
    except FloatingPointError as e:  # non-finite training / export: no traceback
      raise SystemExit(f'error: {_first_line(e)}') from e
    except config_checks.ConfigError as e:  # configuration mistakes, before any work
      raise SystemExit(f'error: {_first_line(e)}') from e
    except Exception as e:  # pylint: disable=broad-except
      if getattr(e, 'user_error', False):  # e.g. a damaged record shard, named
        raise SystemExit(f'error: {_first_line(e)}') from e
      raise
  app.run(guarded, argv=list(argv) if argv is not None else None, flags_parser=parse)


def _first_line(e: BaseException) -> str:
  """The exception's own message (gin's 'In call to configurable' lines dropped)."""
  text = str(e)
  return text.split('\n  In call to configurable')[0].strip()


def query_model_dir(*keys: str) -> Optional[str]:
  """The first of `keys` (macros '%NAME' or bindings) bound to a string path."""
  for key in keys or ('%MODEL_DIR',):
    try:
      value = gin.query_parameter(key)
    except (ValueError, KeyError):
      continue
    if isinstance(value, str):
      return os.path.abspath(os.path.expanduser(value))
  return None


def configurable_entry_point(fn_path: str, output_dir_macro: str, config_name: str):
  """(main, console_entry_point) of a command that runs one gin configurable
  (`fn_path`, 'module.function', imported after the flags are parsed) once:
  parse the gin flags, start multi-process JAX when asked, write the config as
  `config_name` into the directory `output_dir_macro` names, call the function."""

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise SystemExit(f'unexpected arguments: {argv[1:]}')
    parse_gin_flags()
    initialize_distributed_from_flags()
    module, name = fn_path.rsplit('.', 1)
    fn = getattr(importlib.import_module(module), name)
    out_dir = query_model_dir(output_dir_macro)
    if out_dir:
      write_config(out_dir, config_name)
    gin.get_configurable(fn)()

  def console_entry_point(argv: Optional[Sequence[str]] = None) -> None:
    run(main, argv)

  return main, console_entry_point
