"""Imports point one way (docs/ARCHITECTURE.md): a pure-`ast` walk, no TF import.

Package order: models, metrics, distill, data, tasks, training, teacher,
experiments, then t5x_compat and the entry points `distill_sbs/*.py`. Each
module may import (at top level or inside a function) only its own package and
those before it; the package graph has no cycle; only t5x_compat imports T5X.
"""
from __future__ import annotations

import ast
import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ORDER = ('models', 'metrics', 'distill', 'data', 'tasks', 'training', 'teacher',
         'experiments', 't5x_compat', 'entry')
RANK = {p: i for i, p in enumerate(ORDER)}
SUBPACKAGES = frozenset(ORDER) - {'entry'}


def _files():
  """(path, module name, package) of every module of distill_sbs and tasks/."""
  for path in sorted((ROOT / 'distill_sbs').rglob('*.py')):
    rel = path.relative_to(ROOT).with_suffix('').parts
    pkg = rel[1] if len(path.relative_to(ROOT).parts) > 2 else 'entry'
    yield path, '.'.join(rel), pkg
  for path in sorted((ROOT / 'tasks').rglob('*.py')):
    rel = ('distill_sbs', 'tasks') + path.relative_to(ROOT / 'tasks').with_suffix('').parts
    yield path, '.'.join(rel), 'tasks'


def _package_of(module: str):
  """The package of an imported `distill_sbs...` module (None: not ours)."""
  parts = module.split('.')
  if parts[0] != 'distill_sbs':
    return None
  if len(parts) == 1:
    return 'entry'
  return parts[1] if parts[1] in SUBPACKAGES else 'entry'


def _imports(path: pathlib.Path, module: str):
  """(line, imported module, source text) of every import in the file
  (statements anywhere, and `import_module` calls with a literal name)."""
  tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
  is_pkg = path.name == '__init__.py'
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name, ast.unparse(node)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parent = module.split('.')[:len(module.split('.')) - node.level + is_pkg]
        base = '.'.join(parent + ([base] if base else []))
      if base == 'distill_sbs':  # `from distill_sbs import models`
        for alias in node.names:
          yield node.lineno, f'distill_sbs.{alias.name}', ast.unparse(node)
      else:
        yield node.lineno, base, ast.unparse(node)
    elif (isinstance(node, ast.Call) and node.args
          and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)
          and getattr(node.func, 'attr', getattr(node.func, 'id', None))
          == 'import_module'):  # importlib.import_module('distill_sbs....')
      yield node.lineno, node.args[0].value, ast.unparse(node)


def _edges():
  for path, module, pkg in _files():
    for line, target, text in _imports(path, module):
      yield path.relative_to(ROOT), line, text, pkg, target


def test_imports_follow_the_package_order():
  bad = []
  for rel, line, text, pkg, target in _edges():
    if target.split('.')[0] == 't5x':
      if pkg != 't5x_compat':
        bad.append(f'{rel}:{line}: {text}  (only t5x_compat imports T5X)')
      continue
    dep = _package_of(target)
    if dep is None or dep == pkg:
      continue
    if RANK[dep] > RANK[pkg]:
      bad.append(f'{rel}:{line}: {text}  ({pkg} may not import {dep}; order '
                 f'{", ".join(ORDER)})')
  assert not bad, 'imports against the package order:\n' + '\n'.join(bad)


def test_no_cycle_between_packages():
  graph = collections.defaultdict(dict)  # pkg -> dep -> first import site
  for rel, line, text, pkg, target in _edges():
    dep = _package_of(target)
    if dep is not None and dep != pkg:
      graph[pkg].setdefault(dep, f'{rel}:{line}: {text}')
  state, stack, cycles = {}, [], []

  def visit(p):
    state[p] = 'open'
    stack.append(p)
    for q in sorted(graph[p]):
      if state.get(q) == 'open':
        loop = stack[stack.index(q):] + [q]
        cycles.append(' -> '.join(loop) + '\n  ' + '\n  '.join(
            graph[a][b] for a, b in zip(loop, loop[1:])))
      elif q not in state:
        visit(q)
    stack.pop()
    state[p] = 'done'

  for p in sorted(graph):
    if p not in state:
      visit(p)
  assert not cycles, 'package import cycles:\n' + '\n'.join(cycles)


def test_walk_sees_the_packages():
  pkgs = {pkg for _, _, pkg in _files()}
  assert pkgs == set(ORDER), pkgs
  edges = {(pkg, _package_of(t)) for _, _, _, pkg, t in _edges()}
  assert ('tasks', 'data') in edges and ('training', 'models') in edges
