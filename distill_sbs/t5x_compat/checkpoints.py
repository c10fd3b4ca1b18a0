"""Moving parameters between T5X checkpoints and the project's checkpoints.

Both trainers hold the same parameter tree (T5X's names: `token_embedder`,
`encoder/layers_0/attention/query/kernel`, ...); only the containers differ:

  T5X (Orbax, default)   MODEL_DIR/checkpoint_<step>/state  {'target': params,
                                                             'state': {...}}
  T5X (legacy msgpack)   MODEL_DIR/checkpoint_<step>/checkpoint (+ tensorstore)
  project (Orbax)        MODEL_DIR/checkpoints/<step>/state {'params': ..., ...}

`python -m distill_sbs.t5x_compat.checkpoints --t5x=DIR --to_project=MODEL_DIR`
writes a project run directory that `python -m distill_sbs.eval` (and
`INITIAL_CHECKPOINT_PATH`) read; `--project=PATH --to_t5x=DIR` writes a T5X
legacy checkpoint of the parameters, which T5X restores as
`INITIAL_CHECKPOINT_PATH` with the optimizer state initialised afresh (see
docs/t5x.md). The project's own reader (`models.checkpoint_formats.read_params`,
which this module uses) also takes T5X checkpoints, Orbax and legacy, directly.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np

from distill_sbs.models import checkpoint_formats
from distill_sbs.training import checkpoints as project_checkpoints

# One implementation, in models/checkpoint_formats.py (it reads T5X
# checkpoints without T5X installed); re-exported for the converter's users.
t5x_checkpoint_dir = checkpoint_formats.t5x_checkpoint_dir
read_t5x_params = checkpoint_formats.read_t5x_params
T5X_LEGACY_VERSION = checkpoint_formats.T5X_LEGACY_VERSION


def t5x_step(checkpoint_dir: str) -> int:
  """The step of a `checkpoint_<step>` directory (0 when the name has none)."""
  step = checkpoint_formats.step_from_dir_name(
      os.path.basename(os.path.normpath(checkpoint_dir)))
  return 0 if step is None else step


def t5x_to_project(t5x_path: str, model_dir: str, step: Optional[int] = None) -> str:
  """Writes the parameters of a T5X checkpoint as a project checkpoint in
  `model_dir/checkpoints/<step>`; returns that step directory."""
  ckpt = t5x_checkpoint_dir(t5x_path, step)
  params = read_t5x_params(ckpt)
  out_step = t5x_step(ckpt)
  ckptr = project_checkpoints.RunCheckpointer(model_dir, save_period=1, keep=None,
                                              async_save=False)
  try:
    state = {'step': np.asarray(out_step, np.int32), 'params': params}
    ckptr.save(out_step, state, {'source': ckpt}, force=True)
    ckptr.wait()
  finally:
    ckptr.close()
  return os.path.join(ckptr.directory, str(out_step))


def write_t5x_params_checkpoint(checkpoint_dir: str, params: Any, step: int = 0) -> None:
  """T5X's legacy layout with the parameters only: a msgpack `checkpoint` file
  `{'version': 3, 'optimizer': {'target': params, 'state': {'step': step}}}`
  (arrays inline, no optimizer state). T5X restores it with the optimizer
  state initialised afresh (docs/t5x.md); `t5x.checkpoints.load_t5x_checkpoint`
  reads it too. (`models.checkpoint_formats.write_t5x_checkpoint`.)"""
  checkpoint_formats.write_t5x_checkpoint(checkpoint_dir, params, step=step,
                                          tensorstore_min_size=None)


def project_to_t5x(project_path: str, t5x_dir: str, step: int = 0) -> str:
  """Writes the parameters at `project_path` (a project run / step directory, a
  Hugging Face directory, ...) as T5X legacy `t5x_dir/checkpoint_<step>`."""
  params = checkpoint_formats.read_params(project_path)
  out = os.path.join(os.path.abspath(os.path.expanduser(t5x_dir)), f'checkpoint_{step}')
  write_t5x_params_checkpoint(out, params, step=step)
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(
      prog='python -m distill_sbs.t5x_compat.checkpoints',
      description='Convert checkpoints between T5X and the distill-sbs trainer.')
  p.add_argument('--t5x', help='T5X model dir or checkpoint_<step> dir to read')
  p.add_argument('--to_project', help='project MODEL_DIR to write checkpoints/<step> in')
  p.add_argument('--project', help='project run / step / HF dir to read')
  p.add_argument('--to_t5x', help='directory to write checkpoint_<step> (T5X legacy) in')
  p.add_argument('--step', type=int, default=None,
                 help='T5X step to read (default latest) / step to write for --to_t5x')
  args = p.parse_args(argv)
  if args.t5x and args.to_project and not (args.project or args.to_t5x):
    out = t5x_to_project(args.t5x, args.to_project, args.step)
  elif args.project and args.to_t5x and not (args.t5x or args.to_project):
    out = project_to_t5x(args.project, args.to_t5x, args.step or 0)
  else:
    p.error('give either --t5x and --to_project, or --project and --to_t5x')
  print(out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
