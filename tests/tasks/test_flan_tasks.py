"""Registered Flan tasks over prepared records: variants, mixtures, metrics."""
import gin
import pytest
import seqio

from distill_sbs.data import flan
from distill_sbs.data import formats
from distill_sbs.data import paths
from distill_sbs.data import schema
from distill_sbs.tasks import flan as flan_tasks  # noqa: F401  (registers)

LENGTHS = {'inputs': 4096, 'targets': 4096}  # no truncation


def _texts(task, split, **kw):
  t = seqio.get_mixture_or_task(task)
  vocab = t.output_features['inputs'].vocabulary
  ds = t.get_dataset(LENGTHS, split=split, shuffle=False, **kw)
  return [(vocab.decode(ex['inputs'].tolist()), vocab.decode(ex['targets'].tolist()))
          for ex in ds.as_numpy_iterator()]


def test_registered_names():
  for ds in formats.DATASETS:
    mix = seqio.get_mixture_or_task(f'flan_{ds}')
    assert sorted(t.name for t in mix.tasks) == sorted(
        f'flan_{ds}_{v}' for v in flan.VARIANTS)
  assert len(seqio.get_mixture_or_task('flan_all').tasks) == 12


def test_flan_cqa_variants_read_records(sbs_data_dir, monkeypatch):
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(sbs_data_dir))
  recs = list(schema.read_records(paths.split_pattern('cqa', 'validation')))
  zs = _texts('flan_cqa_zs', 'validation')
  assert [t for _, t in zs] == [r['label'] for r in recs]
  for (inputs, _), r in zip(zs, recs):
    assert flan.record_fields('cqa', r)['question'] in inputs
  fs = _texts('flan_cqa_fs', 'validation')
  # Three train exemplars + the query; templates end the query in 'Answer:' / 'A:'.
  assert all(i.count('\n\n') >= 3 for i, _ in fs)
  train_questions = {flan.record_fields('cqa', r)['question']
                     for r in schema.read_records(paths.split_pattern('cqa', 'train'))}
  first = fs[0][0].split('\n\n')[1]
  assert any(q in first for q in train_questions)
  cot = _texts('flan_cqa_cot', 'validation')
  assert len(cot) == len(recs)  # eval keeps every example
  task = seqio.get_mixture_or_task('flan_cqa_cot')
  for (_, target), r in zip(cot, recs):
    assert target.endswith(f"So the answer is {r['label']}.")
    assert task.postprocess_fn(target, is_target=True) == r['label']
  # gin: shot counts and seed.
  with gin.unlock_config():
    gin.parse_config(['flan_options.fs_k = 1'])
  try:
    one = _texts('flan_cqa_fs', 'validation')
  finally:
    gin.clear_config()
  assert [i.count('\nAnswer: ') + i.count('\nA: ') for i, _ in one] == [1] * len(recs)


def test_flan_train_cot_needs_rationale(sbs_data_dir, monkeypatch):
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(sbs_data_dir))
  recs = list(schema.read_records(paths.split_pattern('anli1', 'train')))
  cot = _texts('flan_anli1_cot', 'train')
  assert len(cot) == sum(bool(r['rationale'].strip()) for r in recs) > 0
  assert all(' So the answer is ' in t for _, t in cot)


def test_missing_records_error(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no records match'):
    _texts('flan_svamp_zs', 'test')
