"""`python -m distill_sbs.calibrate` on top-k records: fits T, writes the manifest."""
import json

import numpy as np
import pytest
import scipy.special

from distill_sbs import calibrate
from distill_sbs.data import schema


def _write(tmp_path, scale=2.0, n_rec=1500, length=12, v=40, k=10):
  rng = np.random.default_rng(0)
  recs = []
  for i in range(n_rec):
    z = rng.normal(size=(length, v)) * 1.5
    gold = np.argmax(z + rng.gumbel(size=z.shape), axis=1)
    teacher = scipy.special.log_softmax(scale * z, axis=1)
    ids = np.argsort(-teacher, axis=1)[:, :k]
    rec = {'id': f'v{i}', 'inputs': 'q', 'label': 'g', 'teacher_target_ids': gold,
           'teacher_topk_field': 'label', 'teacher_vocab_hash': 'h'}
    rec.update(schema.encode_topk(ids, np.take_along_axis(teacher, ids, 1), v))
    recs.append(rec)
  recs.append({'id': 'other', 'inputs': 'q', 'teacher_target_ids': [1], 'teacher_topk_field':
               'llm_output', **schema.encode_topk(np.zeros((1, k)), np.zeros((1, k)), v)})
  schema.write_shards(str(tmp_path), 'validation', recs, num_shards=2)
  (tmp_path / 'manifest.json').write_text(json.dumps({'dataset': 'cqa'}))


def test_calibrate_cli_fits_and_writes_manifest(tmp_path, capsys):
  _write(tmp_path)
  out = tmp_path / 'report' / 'calib.json'
  report = calibrate.main([f'--records={tmp_path}', '--split=validation', f'--out={out}',
                           f'--plot_dir={tmp_path / "plots"}'])
  assert report['temperature'] == pytest.approx(2.0, rel=0.03)
  assert report['num_records'] == 1500  # the llm_output-aligned record is skipped
  m = json.loads((tmp_path / 'manifest.json').read_text())
  assert m['dataset'] == 'cqa' and m['teacher_temperature'] == report['temperature']
  assert json.loads(out.read_text())['ece_after'] < report['ece_before']
  text = capsys.readouterr().out
  assert 'ECE  before' in text and 'after' in text
  assert (tmp_path / 'plots' / 'teacher_reliability_after.png').read_bytes()[:4] == b'\x89PNG'


def test_calibrate_cli_errors_name_the_fields(tmp_path):
  _write(tmp_path, n_rec=3)
  with pytest.raises(ValueError, match="'llm_output'"):
    calibrate.main([f'--records={tmp_path}', '--gold_field=rationale', '--split=validation'])
  with pytest.raises(FileNotFoundError, match='test.tfrecord'):
    calibrate.main([f'--records={tmp_path}', '--split=test'])
