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


def test_calibrate_with_a_local_teacher_scoring_gold_labels(tmp_path):
  """--checkpoint: a tiny HF teacher scores the gold labels; T equals the fit on
  its own top-k computed directly (a random teacher rarely has the gold token in
  its top-k, so the rest bucket scores those tokens)."""
  import jax
  import jax.numpy as jnp
  from flax.core import meta
  from distill_sbs import models
  from distill_sbs.data import vocab as vocab_lib
  from distill_sbs.distill import temperature
  from distill_sbs.models import decoding
  config = models.T5Config(vocab_size=384, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                           num_encoder_layers=1, num_decoder_layers=1,
                           relative_attention_num_buckets=8, relative_attention_max_distance=20)
  x = jnp.ones((2, 8), jnp.int32)
  params = meta.unbox(models.Transformer(config).init(jax.random.PRNGKey(0), x, x, x,
                                                      enable_dropout=False)['params'])
  models.save_hf_checkpoint(tmp_path / 'teacher', config, params)
  recs = [{'id': f'v{i}', 'inputs': f'q{i}', 'label': 'ab'[i % 2] * (1 + i % 3)}
          for i in range(6)]
  schema.write_shards(str(tmp_path / 'prep'), 'validation', recs)
  report = calibrate.main([f'--records={tmp_path / "prep"}', '--split=validation',
                           f'--checkpoint={tmp_path / "teacher"}', '--k=4',
                           '--input_template=Q: {inputs}', '--max_input_length=16',
                           '--max_target_length=8', '--batch_size=4', '--outside=rest',
                           f'--write_to={tmp_path / "first"}'])
  vocab = vocab_lib.get_vocabulary()
  enc = np.zeros((6, 16), np.int32)
  tgt = np.zeros((6, 8), np.int32)
  for i, r in enumerate(recs):
    a = vocab.encode('Q: ' + r['inputs']) + [1]
    b = vocab.encode(r['label']) + [1]
    enc[i, :len(a)], tgt[i, :len(b)] = a, b
  ids, lps = decoding.topk_scores(config, params, enc, tgt, 4)
  real = tgt > 0
  fit = temperature.fit_temperature(np.asarray(ids)[real], np.asarray(lps)[real], tgt[real],
                                    outside='rest')
  assert report['num_tokens'] == int(real.sum())
  assert report['temperature'] == pytest.approx(fit.temperature, rel=1e-4)
  m = json.loads((tmp_path / 'first' / 'manifest.json').read_text())
  assert m['teacher_temperature'] == report['temperature']
