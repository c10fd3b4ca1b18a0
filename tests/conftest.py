"""Shared test setup: 8 forced host devices, quiet TF, shared data path."""
import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_SBS = REPO.parent / 'shared' / 'data' / 'sbs'


@pytest.fixture(scope='session')
def raw_dir() -> pathlib.Path:
  """The paper's public data (../shared/data/sbs beside the checkout)."""
  path = pathlib.Path(os.environ.get('DISTILL_SBS_RAW_DIR', SHARED_SBS))
  if not (path / 'cqa').is_dir():
    pytest.fail(f'paper data not found at {path}; set DISTILL_SBS_RAW_DIR')
  return path
