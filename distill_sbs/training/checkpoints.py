"""Run checkpointing: Orbax `CheckpointManager` saves, restore and rotation.

A run's checkpoints live in `MODEL_DIR/checkpoints/<step>/` with two items:
`state` (the `TrainState`: step, params, optimizer state; arrays saved
sharded, restorable onto any mesh) and `data` (JSON: the input iterator
position). Reading parameters from a run, a Hugging Face or a T5X directory
(initial weights, evaluation, export) is `models/checkpoint_formats.py`.

`restore_latest` survives damaged checkpoints: one that fails to restore is
reported (path, step, cause), moved aside to `MODEL_DIR/checkpoints.damaged/`
(not deleted) and the previous step is tried. A checkpoint whose parameter
shapes differ from the model raises `ShapeMismatchError` naming them.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import orbax.checkpoint as ocp

from distill_sbs.models import checkpoint_formats
from distill_sbs.training import config_checks

# Still reached through this module by training/evaluation.py; the readers
# live in models/checkpoint_formats.py.
find_step_dir = checkpoint_formats.find_step_dir
load_params = checkpoint_formats.load_params
step_from_dir_name = checkpoint_formats.step_from_dir_name


def check_finite_state(step: int, state: Any) -> None:
  """Raises `FloatingPointError` naming the non-finite leaves of `state`."""
  from distill_sbs.training import trainer  # pylint: disable=g-import-not-at-top
  trees = {'params': getattr(state, 'params', state),
           'opt_state': getattr(state, 'opt_state', None)}
  if bool(jax.device_get(trainer.all_finite(trees))):
    return
  bad = trainer.nonfinite_leaves(trees)
  raise FloatingPointError(
      f'refusing to save checkpoint {step}: non-finite values in '
      f'{", ".join(bad[:8])}{" ..." if len(bad) > 8 else ""}; the previous '
      'checkpoints are kept')


class ShapeMismatchError(config_checks.ConfigError):
  """A checkpoint's parameters do not have the model's shapes."""


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
                  for k in path)


def compare_shapes(step_dir: str, abstract_params: Any) -> None:
  """Raises `ShapeMismatchError` listing each parameter whose shape in the
  checkpoint at `step_dir` differs from `abstract_params` (or is missing)."""
  meta = ocp.PyTreeCheckpointer().metadata(os.path.join(step_dir, 'state'))
  tree = meta.item_metadata.tree if hasattr(meta, 'item_metadata') else meta
  saved = {_path_str(p): tuple(getattr(m, 'shape', ()))
           for p, m in jax.tree_util.tree_flatten_with_path(tree['params'])[0]}
  want = {_path_str(p): tuple(a.shape)
          for p, a in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  diffs = [f'{k}: {saved[k]} in the checkpoint, {want[k]} in the model'
           for k in sorted(set(saved) & set(want)) if saved[k] != want[k]]
  diffs += [f'{k}: in the model, not in the checkpoint' for k in sorted(set(want) - set(saved))]
  diffs += [f'{k}: in the checkpoint, not in the model' for k in sorted(set(saved) - set(want))]
  if diffs:
    raise ShapeMismatchError(
        f'checkpoint {step_dir} does not fit the model gin ({len(diffs)} parameter(s)):\n  '
        + '\n  '.join(diffs[:20]) + ('\n  ...' if len(diffs) > 20 else '')
        + '\nresume with the configuration recorded in config.gin, or use another MODEL_DIR')


def require_checkpoint(path: str) -> str:
  """`path` (absolute) when it holds a checkpoint `read_params` can read (a run,
  checkpoints, step, T5X or Hugging Face directory), else `ConfigError`
  "no checkpoint in MODEL_DIR/CHECKPOINT_PATH=..."."""
  full = os.path.abspath(os.path.expanduser(str(path)))
  if os.path.isdir(full) and (os.path.isfile(os.path.join(full, 'config.json'))
                              or checkpoint_formats.find_step_dir(full) is not None):
    return full
  why = ('the directory does not exist' if not os.path.exists(full) else
         'no checkpoints/<step>/ directory, T5X checkpoint_<N> or Hugging Face '
         'config.json in it')
  raise config_checks.ConfigError(
      f'no checkpoint in MODEL_DIR/CHECKPOINT_PATH={full} ({why}); train first, or '
      'point CHECKPOINT_PATH at a run, step, T5X or Hugging Face directory')


def _say(msg: str) -> None:
  if jax.process_index() == 0:
    print(f'[distill_sbs.train] {msg}', file=sys.stderr, flush=True)


class RunCheckpointer:
  """Periodic async saves with keep-N and resume (`MODEL_DIR/checkpoints`)."""

  def __init__(self, model_dir: str, *, save_period: int = 1000, keep: Optional[int] = 3,
               async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(model_dir), 'checkpoints')
    self.save_period = int(save_period)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=('state', 'data'))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> Sequence[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Mapping[str, Any],
           force: bool = False) -> bool:
    """Saves when `step` is on the period (or `force`); returns whether it did.

    Refuses (`NonFiniteError`-like `FloatingPointError`) a state whose
    parameters or optimizer state hold a NaN / inf: a bad save would rotate
    the good checkpoints away."""
    if step in self._manager.all_steps():
      return False
    check_finite_state(step, state)
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(dict(data_state))),
        force=force)

  def restore(self, step: Optional[int], abstract_state: Any) -> tuple[Any, dict]:
    """Restores `state` with the target shardings in `abstract_state`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    out = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore()))
    return out['state'], dict(out['data'] or {})

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def move_aside(self, step: int) -> str:
    """Moves checkpoint `step` to `MODEL_DIR/checkpoints.damaged/` (process 0)."""
    dest = os.path.join(self.directory + '.damaged', f'{step}-{int(time.time())}')
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      shutil.move(self.step_dir(step), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'move_aside_{step}')
    self._manager.reload()
    return dest

  def restore_latest(self, abstract_state: Any, report: Callable[[str], None] = _say
                     ) -> Optional[tuple[int, Any, dict]]:
    """(step, state, data state) of the newest checkpoint that restores, or
    None when there is none; damaged ones are reported and moved aside."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        compare_shapes(self.step_dir(step), abstract_state.params)
        state, data = self.restore(step, abstract_state)
        return step, state, data
      except ShapeMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        cause = f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
        moved = self.move_aside(step)
        left = self.all_steps()
        report(f'checkpoint step {step} at {self.step_dir(step)} failed to restore ({cause}); '
               f'moved it to {moved}; '
               + (f'falling back to step {max(left)}' if left else
                  'no earlier checkpoint: starting from scratch'))
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
