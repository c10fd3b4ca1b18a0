"""Atomic `prepare`: a killed or failing re-prepare leaves the previous dataset
untouched and readable; the sources check shard digests and name a damaged file."""
import glob
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from distill_sbs.data import prepare
from distill_sbs.data import record_sources
from distill_sbs.data import schema

REPO = pathlib.Path(__file__).resolve().parents[2]


def _write_raw(root, n_train=20, n_test=5):
  d = root / 'svamp'
  (d / 'llm').mkdir(parents=True, exist_ok=True)
  rows = lambda n: ''.join(json.dumps({'input': f'Tom has {i} apples.\nHow many?',
                                       'label': f'( {i}.0 + 1.0 )'}) + '\n' for i in range(n))
  outs = lambda n: json.dumps([f'He has {i}. The answer is ({i} + 1).\n\nQ: more'
                               for i in range(n)])
  (d / 'svamp_train.json').write_text(rows(n_train))
  (d / 'svamp_test.json').write_text(rows(n_test))
  (d / 'llm' / 'train_CoT_0.json').write_text(outs(n_train))
  (d / 'llm' / 'test_CoT_0.json').write_text(outs(n_test))


def _snapshot(d):
  return {p: hashlib.sha256(open(p, 'rb').read()).hexdigest()
          for p in glob.glob(os.path.join(d, '**', '*'), recursive=True) if os.path.isfile(p)}


def _count(data, split):
  src = record_sources.SbsRecordsSource('svamp', 'label_gold', records_dir=str(data / 'svamp'))
  return sum(1 for _ in src.get_dataset(split).as_numpy_iterator())


@pytest.fixture
def prepared(tmp_path):
  raw, data = tmp_path / 'raw', tmp_path / 'data'
  _write_raw(raw)
  m = prepare.prepare_dataset(str(raw), 'svamp', str(data), num_shards=2)
  assert set(m['shard_sha256']) == {f for s in m['splits'].values() for f in s['files']}
  assert m['split_seed'] == 0 and m['num_shards'] == 2
  return raw, data, _snapshot(str(data))


def test_killed_reprepare_leaves_previous_dataset(prepared):
  raw, data, before = prepared
  code = ('import os, signal, sys\n'
          'from distill_sbs.data import prepare, schema\n'
          'orig = schema.write_shards\n'
          'def write(out_dir, split, *a, **k):\n'
          '  if split == "test":\n'
          '    os.kill(os.getpid(), signal.SIGKILL)\n'
          '  return orig(out_dir, split, *a, **k)\n'
          'schema.write_shards = write\n'
          'sys.exit(prepare.main(sys.argv[1:]))\n')
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='3')
  res = subprocess.run([sys.executable, '-c', code, '--raw_dir', str(raw), '--data_dir',
                        str(data), '--datasets', 'svamp', '--seed', '1', '--num_shards', '2'],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
  assert _snapshot(str(data)) == before
  assert _count(data, 'train') == 18 and _count(data, 'validation') == 2
  # The next prepare cleans the abandoned staging folder and swaps in the new seed.
  assert glob.glob(str(data / '.svamp.staging-*'))
  m = prepare.prepare_dataset(str(raw), 'svamp', str(data), num_shards=2, seed=1)
  assert m['split_seed'] == 1 and not glob.glob(str(data / '.svamp.*'))
  assert _count(data, 'train') == 18


def test_write_failure_on_third_split_changes_nothing(prepared, monkeypatch, capsys):
  raw, data, before = prepared
  orig = schema.write_shards

  def write(out_dir, split, *a, **k):
    if split == 'test':
      raise OSError(f'{out_dir}: disk full')
    return orig(out_dir, split, *a, **k)
  monkeypatch.setattr(schema, 'write_shards', write)
  assert prepare.main(['--raw_dir', str(raw), '--data_dir', str(data), '--datasets', 'svamp',
                       '--seed', '1', '--num_shards', '2']) == 1
  assert 'disk full' in capsys.readouterr().err
  assert _snapshot(str(data)) == before and not glob.glob(str(data / '.svamp.*'))


def test_truncated_shard_names_its_file(prepared):
  _, data, _ = prepared
  shard = data / 'svamp' / 'train.tfrecord-00001-of-00002'
  shard.write_bytes(shard.read_bytes()[:-7])
  with pytest.raises(record_sources.DataIntegrityError,
                     match=rf'{shard}: sha256 .* differs from .*manifest.json.*re-run'):
    _count(data, 'train')
  # Without digests (e.g. records written by other tools) a read names the file.
  manifest = data / 'svamp' / 'manifest.json'
  m = json.loads(manifest.read_text())
  del m['shard_sha256']
  manifest.write_text(json.dumps(m))
  with pytest.raises(record_sources.DataIntegrityError,
                     match=rf'{shard}: cannot read this record shard \(DataLossError'):
    _count(data, 'train')
