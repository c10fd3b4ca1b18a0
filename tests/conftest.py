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


SBS_TEST_MAX_ROWS = 200


@pytest.fixture(scope='session')
def sbs_data_dir(raw_dir, tmp_path_factory) -> pathlib.Path:
  """Records `prepare` wrote from the first 200 rows of every raw split of the
  four datasets (once per session). Point tasks at it with
  `monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(sbs_data_dir))`."""
  from distill_sbs.data import prepare  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('sbs_data')
  for ds in ('cqa', 'svamp', 'esnli', 'anli1'):
    prepare.prepare_dataset(str(raw_dir), ds, str(out), max_rows=SBS_TEST_MAX_ROWS)
  return out
