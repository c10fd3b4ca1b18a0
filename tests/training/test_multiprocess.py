"""Two processes × 4 CPU devices (jax.distributed on localhost, gloo
collectives) train to the same losses and parameters as one process × 8."""
import pathlib
import subprocess
import sys

import numpy as np

import train_helpers as helpers
import mp_worker

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_two_processes_equal_one_process(tmp_path):
  env = helpers.cli_env()
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
  port, out = helpers.free_port(), tmp_path / 'mp.npz'
  procs = [subprocess.Popen([sys.executable, str(REPO / 'tests/training/mp_worker.py'),
                             str(pid), str(port), str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for pid in (0, 1)]
  # The single-process reference runs meanwhile (8 forced devices, conftest).
  ref_losses, ref_params = mp_worker.train(helpers.synthetic_batches(3, batch=8, seed=1))
  for p in procs:
    log, _ = p.communicate(timeout=400)
    assert p.returncode == 0, log.decode()[-3000:]
  got = np.load(out)
  np.testing.assert_allclose(got['losses'], ref_losses, atol=1e-5)
  assert set(ref_params) == set(got.files) - {'losses'}
  for k, v in ref_params.items():
    np.testing.assert_allclose(got[k], v, atol=1e-5, err_msg=k)
