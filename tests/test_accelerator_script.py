"""benchmarks/accelerator.sh runs at the tiny size on CPU with TensorFlow and
seqio made unimportable, as on the accelerator machine's stock image."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCK = '''
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'seqio', 'tensorflow_text', 'tensorflow_datasets'):
      raise ImportError('No module named %r (not on the accelerator image)' % name)
sys.meta_path.insert(0, _Block())
'''


@pytest.mark.parametrize('scan', ['', '1'])
def test_accelerator_script_at_tiny_size_without_tensorflow(tmp_path, scan):
  (tmp_path / 'sitecustomize.py').write_text(BLOCK)
  out = tmp_path / 'results.jsonl'
  env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(tmp_path), SIZES='tiny',
             TRAIN_BATCH='8', DECODE_BATCH='8', STEPS='2', OUT=str(out),
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  if scan:
    env['SCAN_LAYERS'] = scan  # T5X's scan_layers through the script
  proc = subprocess.run(['bash', str(REPO / 'benchmarks' / 'accelerator.sh')], env=env,
                        capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  train, decode = rows
  assert train['size'] == decode['size'] == 'tiny' and train['dtype'] == 'bfloat16'
  assert (train['inputs'], train['targets']) == (512, 114)
  assert train['tokens_per_sec'] > 0 and 0 < train['mfu'] < 1
  assert train['scan_layers'] is bool(scan)
  assert decode['tokens_per_sec'] > 0 and decode['targets'] == 114
  assert 'MFU' in proc.stdout and 'greedy decode' in proc.stdout
