"""SIGTERM to one of two processes: both stop at the same step (JAX's
preemption sync point), save one checkpoint together and exit 75."""
import pathlib
import signal
import subprocess
import sys
import time

import train_helpers as helpers
from distill_sbs.training import preemption

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 2000


def test_sigterm_on_one_host_stops_both_at_one_step(tmp_path):
  env = helpers.cli_env()
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
  port, run = helpers.free_port(), tmp_path / 'run'
  procs = [subprocess.Popen([sys.executable, str(REPO / 'tests/training/mp_preempt_worker.py'),
                             str(pid), str(port), str(run), str(STEPS)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for pid in (0, 1)]
  log = run / 'metrics.jsonl'
  deadline = time.time() + 300
  while all(p.poll() is None for p in procs) and time.time() < deadline:
    if log.exists() and len(log.read_text().splitlines()) >= 3:
      break
    time.sleep(0.01)
  assert all(p.poll() is None for p in procs), [p.communicate()[0][-2000:] for p in procs]
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [preemption.EXIT_PREEMPTED] * 2, \
      [o[-3000:] for o in outs]
  saved = [int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and 3 <= saved[0] < STEPS, saved
  assert f'preempted: saved checkpoint {saved[0]}' in outs[0]
