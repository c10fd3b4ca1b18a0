"""distill_sbs.tasks: importing this package registers every SeqIO task/mixture.

`sbs` (distilling step-by-step) first; `first`, `ul2r` and `flan` when their
module files are present (each depends on `sbs` being registered).
"""
import importlib
import os

from distill_sbs.tasks import sbs  # noqa: F401

_HERE = os.path.dirname(os.path.abspath(__file__))
for _name in ('first', 'ul2r', 'flan'):
  if os.path.exists(os.path.join(_HERE, f'{_name}.py')):
    importlib.import_module(f'distill_sbs.tasks.{_name}')
