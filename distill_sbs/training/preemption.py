"""Preemption: SIGTERM / SIGINT stop training cleanly at a step boundary.

The first signal asks the loop to finish its step, save a checkpoint, flush
the metrics and exit with `EXIT_PREEMPTED`; a second one aborts at once (the
default action of the signal). With several processes every host must stop at
the same step: JAX's preemption sync manager (started by
`jax.distributed.initialize`, which catches SIGTERM itself) agrees on it through
`multihost_utils.reached_preemption_sync_point`, as Orbax's
`CheckpointManager.reached_preemption` does; without it the hosts exchange
their local flags every step.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Optional

import jax

# EX_TEMPFAIL (sysexits.h): the run stopped early and resumes when restarted.
EXIT_PREEMPTED = 75


class Preempted(SystemExit):
  """Raised after the preemption checkpoint is written (exit `EXIT_PREEMPTED`)."""

  def __init__(self, step: int):
    super().__init__(EXIT_PREEMPTED)
    self.step = int(step)


def _sync_manager_available() -> bool:
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  state = distributed.global_state
  return state.client is not None and getattr(state, 'preemption_sync_manager', None) is not None


class PreemptionGuard:
  """Installs the handlers on `__enter__` (main thread only), restores them on exit."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: Optional[int] = None  # the first signal received
    self._previous: dict[int, object] = {}
    self._multi = jax.process_count() > 1
    self._synced = self._multi and _sync_manager_available()

  def _handler(self, signum, frame):
    del frame
    if self.requested is not None:  # second signal: abort now
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.requested = signum
    print(f'[distill_sbs.train] {signal.Signals(signum).name}: finishing this step, '
          'saving a checkpoint, then exiting (send it again to abort now)',
          file=sys.stderr, flush=True)

  def __enter__(self) -> 'PreemptionGuard':
    for sig in self.SIGNALS:
      if sig == signal.SIGTERM and self._synced:
        continue  # JAX's preemption notifier owns SIGTERM
      try:
        self._previous[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not the main thread
        pass
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  # With the sync manager (SIGTERM), a local SIGINT is exchanged only every
  # this many steps: a host-blocking all-gather per step would stall the
  # asynchronous dispatch.
  SIGINT_EXCHANGE_STEPS = 10

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (the same answer on every host;
    every host must call it at every step)."""
    if not self._multi:
      return self.requested is not None
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if self._synced:
      if multihost_utils.reached_preemption_sync_point(step):
        return True
      if step % self.SIGINT_EXCHANGE_STEPS:
        return False
    flags = multihost_utils.process_allgather(
        np.asarray(self.requested is not None, np.int32))
    return bool(np.any(flags))
