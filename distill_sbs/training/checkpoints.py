"""Run checkpointing: Orbax `CheckpointManager` saves, restore and rotation.

A run's checkpoints live in `MODEL_DIR/checkpoints/<step>/` with two items:
`state` (the `TrainState`: step, params, optimizer state; arrays saved
sharded, restorable onto any mesh) and `data` (JSON: the input iterator
position). Reading parameters from a run, a Hugging Face or a T5X directory
(initial weights, evaluation, export) is `models/checkpoint_formats.py`.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import jax
import orbax.checkpoint as ocp

from distill_sbs.models import checkpoint_formats

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

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
