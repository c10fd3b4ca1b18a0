"""SeqIO tasks and mixtures over records `prepare` wrote (tests/conftest.py)."""
import collections
import os

import numpy as np
import pytest
import seqio

from distill_sbs.data import schema
from distill_sbs.data import vocab
import distill_sbs.tasks  # noqa: F401  (registers; the data dir is set later)
from distill_sbs.tasks import first
from distill_sbs.tasks import sbs

DATASETS = ('cqa', 'svamp', 'esnli', 'anli1')
FRACS = ('12p5pct', '25pct', '50pct', '75pct', '100pct')
LENGTHS = {'inputs': 2048, 'targets': 2048}


@pytest.fixture(scope='module', autouse=True)
def data_env(sbs_data_dir):
  old = os.environ.get('DISTILL_SBS_DATA_DIR')
  os.environ['DISTILL_SBS_DATA_DIR'] = str(sbs_data_dir)
  vocab.reset_default_vocabulary()
  yield sbs_data_dir
  if old is None:
    del os.environ['DISTILL_SBS_DATA_DIR']
  else:
    os.environ['DISTILL_SBS_DATA_DIR'] = old


def records(data_dir, ds, split):
  return list(schema.read_records(str(data_dir / ds / f'{split}.tfrecord-*')))


def expected_pairs(kind, split, recs):
  """(inputs, targets) each kind should yield, computed from the records."""
  out = []
  for r in recs:
    x, gold, rat = r['inputs'], r['label'], r['rationale']
    lab = r['llm_label'] if split == 'train' else gold
    if kind == 'label_gold':
      out.append((x, gold))
    elif kind == 'label_llm' and lab:
      out.append((x, lab))
    elif kind == 'predict_gold':
      out.append(('predict: ' + x, gold))
    elif kind == 'predict_llm' and lab:
      out.append(('predict: ' + x, lab))
    elif kind == 'rationale' and rat:
      out.append(('explain: ' + x, rat))
    elif kind == 'cot' and (rat or split != 'train') and lab:
      out.append((x, f'{rat} So the answer is {lab}'.strip()))
    elif kind == 'paired_gold' and rat:
      out.append(('predict: ' + x, gold))
    elif kind == 'paired_llm' and rat and lab:
      out.append(('predict: ' + x, lab))
  return out


def task_pairs(name, split):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  out = []
  for ex in ds.as_numpy_iterator():
    assert ex['targets'][-1] == 1  # EOS
    assert vocab.DEFAULT_VOCABULARY.decode(ex['targets'].tolist()) == (
        ex['targets_pretokenized'].decode())
    out.append((ex['inputs_pretokenized'].decode(), ex['targets_pretokenized'].decode()))
  return out


def test_every_name_is_registered_and_resolves():
  tasks = [f'sbs_{ds}_{k}{s}' for ds in DATASETS for k in sbs.TASK_KINDS
           for s in ('',) + tuple('_' + f for f in FRACS)]
  mixtures = [f'sbs_{ds}_{t}{s}' for ds in DATASETS for t in ('gold', 'llm')
              for s in ('',) + tuple('_' + f for f in FRACS)]
  assert len(tasks) == 192 and len(mixtures) == 48
  for name in tasks:
    t = seqio.get_mixture_or_task(name)
    assert isinstance(t, seqio.Task) and t.source.splits == ('train', 'validation',
                                                               'test')
    assert t.output_features['targets'].vocabulary is vocab.DEFAULT_VOCABULARY
  for ds in DATASETS:
    for teacher in ('gold', 'llm'):
      for suffix in ('',) + tuple('_' + f for f in FRACS):
        m = seqio.get_mixture_or_task(f'sbs_{ds}_{teacher}{suffix}')
        assert sorted(t.name for t in m.tasks) == [
            f'sbs_{ds}_predict_{teacher}{suffix}', f'sbs_{ds}_rationale{suffix}']
        assert [m.get_rate(t) for t in m.tasks] == [0.5, 0.5]


@pytest.mark.parametrize('ds', DATASETS)
def test_task_counts_and_contents(data_env, ds):
  for kind in sbs.TASK_KINDS:
    if kind.startswith('paired'):
      continue
    for split in ('validation',) + (('train',) if kind in ('label_llm', 'cot') else ()):
      assert task_pairs(f'sbs_{ds}_{kind}', split) == expected_pairs(
          kind, split, records(data_env, ds, split)), (kind, split)
  assert len(task_pairs(f'sbs_{ds}_label_gold', 'test')) == 200
  assert len(task_pairs(f'sbs_{ds}_cot', 'test')) == 200


def test_paired_task_features(data_env):
  recs = records(data_env, 'svamp', 'train')
  for kind in ('paired_gold', 'paired_llm'):
    ds = seqio.get_mixture_or_task(f'sbs_svamp_{kind}').get_dataset(
        LENGTHS, split='train', shuffle=False)
    got = [(e['inputs_pretokenized'].decode(), e['targets_pretokenized'].decode(),
            e['rationale_inputs_pretokenized'].decode(),
            e['rationale_targets_pretokenized'].decode()) for e in ds.as_numpy_iterator()]
    exp = [(x, t, 'explain: ' + x[len('predict: '):], r['rationale'])
           for (x, t), r in zip(expected_pairs(kind, 'train', recs),
                                [r for r in recs if r['rationale'] and (
                                    kind == 'paired_gold' or r['llm_label'])])]
    assert got == exp and len(got) > 150


@pytest.mark.parametrize('ds', ['cqa', 'esnli'])
def test_fractions_nested_deterministic(data_env, ds):
  recs = records(data_env, ds, 'train')
  n = len(recs)
  perm = np.random.RandomState(0).permutation(n)
  prev = collections.Counter()
  for frac, pct in zip(FRACS, (12.5, 25, 50, 75, 100)):
    got = collections.Counter(task_pairs(f'sbs_{ds}_label_gold_{frac}', 'train'))
    k = int(round(n * pct / 100))
    want = collections.Counter((recs[i]['inputs'], recs[i]['label']) for i in perm[:k])
    assert got == want and sum(got.values()) == k
    assert not prev - got  # nested
    prev = got
  assert task_pairs(f'sbs_{ds}_label_gold_25pct', 'train') == task_pairs(
      f'sbs_{ds}_label_gold_25pct', 'train')
  # Validation and test are not subsampled.
  assert len(task_pairs(f'sbs_{ds}_label_gold_12p5pct', 'validation')) == 20


@pytest.mark.parametrize('ds', DATASETS)
def test_fraction_sizes_every_dataset(data_env, ds):
  src = seqio.get_mixture_or_task(f'sbs_{ds}_rationale_50pct').source
  files = src.list_shards('train')
  n = sum(1 for _ in schema.read_records(files[0]))
  assert int(src.train_mask(files).sum()) == int(round(n / 2))
  small = sbs.SbsRecordsSource(ds, 'label_gold', None, 12.5).train_mask(files)
  assert not (small & ~src.train_mask(files)).any()


@pytest.mark.parametrize('name', ['sbs_cqa_llm', 'sbs_svamp_gold_25pct'])
def test_mixture_yields_both_tasks(name):
  m = seqio.get_mixture_or_task(name)
  ds = m.get_dataset(LENGTHS, split='train', shuffle=True, seed=3, num_epochs=1)
  prefixes = collections.Counter(
      vocab.DEFAULT_VOCABULARY.decode(e['inputs'].tolist()).split(':')[0]
      for e in ds.take(200).as_numpy_iterator())
  assert set(prefixes) == {'predict', 'explain'}
  if name.endswith('25pct'):  # 45 of 180 train rows; epoch ends with one task
    assert max(prefixes.values()) == 45 and min(prefixes.values()) >= 30
  else:
    assert 60 < prefixes['predict'] < 140  # rates 0.5 / 0.5


def test_alpha_sets_mixture_rates():
  import gin
  gin.parse_config('mixture_alpha.alpha = 0.8')
  try:
    m = seqio.get_mixture_or_task('sbs_anli1_llm')
    rates = {t.name: m.get_rate(t) for t in m.tasks}
    assert rates == {'sbs_anli1_predict_llm': 0.8,
                     'sbs_anli1_rationale': pytest.approx(0.2)}
  finally:
    gin.clear_config()


def test_metrics_and_cot_postprocessor():
  cot = seqio.get_mixture_or_task('sbs_svamp_cot')
  assert cot.postprocess_fn('He adds. So the answer is (3 + 4).') == '(3 + 4)'
  assert cot.postprocess_fn('no marker') == ''
  (metric,) = cot.predict_metric_fns
  assert metric(['(3 + 4)', '(2 * 2)'], ['7', '(1 + 1)']) == {'accuracy': 50.0}
  nli = seqio.get_mixture_or_task('sbs_esnli_label_gold').predict_metric_fns[0]
  assert nli(['neutral'], ['Neutral.'])['accuracy_neutral'] == 100.0
  rat = seqio.get_mixture_or_task('sbs_cqa_rationale')
  assert not rat.predict_metric_fns and rat.score_metric_fns


@pytest.fixture
def unregister():
  names = []
  yield names
  for n in names:
    for reg in (seqio.TaskRegistry, seqio.MixtureRegistry):
      if n in reg.names():
        reg.remove(n)


def test_register_records_dir_under_new_prefix(data_env, tmp_path, unregister):
  recs = records(data_env, 'anli1', 'validation')[:7]
  for split in ('train', 'validation', 'test'):
    schema.write_shards(str(tmp_path), split, recs)
  names = sbs.register_sbs_tasks('anli1', records_dir=str(tmp_path),
                                 prefix='sbs_teacher', fractions=(50,))
  unregister.extend(names)
  assert 'sbs_teacher_anli1_llm_50pct' in names
  got = task_pairs('sbs_teacher_anli1_label_llm', 'train')
  assert got == expected_pairs('label_llm', 'train', recs)
  assert len(task_pairs('sbs_teacher_anli1_label_gold_50pct', 'train')) == 4


def test_missing_records_error_names_the_path(tmp_path, unregister):
  unregister.extend(sbs.register_sbs_tasks(
      'svamp', records_dir=str(tmp_path / 'none'), prefix='sbs_missing', fractions=()))
  with pytest.raises(FileNotFoundError, match='none/train.tfrecord'):
    seqio.get_mixture_or_task('sbs_missing_svamp_label_gold').get_dataset(
        LENGTHS, split='train')


def test_registering_a_name_twice_raises():
  """Registration is strict (SeqIO's duplicate-provider error), once at import."""
  with pytest.raises(ValueError, match='duplicate'):
    sbs.register_sbs_tasks('cqa', fractions=())
  with pytest.raises(ValueError, match='duplicate'):
    first.register_rank_tasks('esnli')
  names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  for ds in DATASETS:  # mode-token variants are declared with their base tasks
    for mode in sbs.MODE_VARIANTS:
      assert {f'sbs_{ds}_{k}_{mode}' for k in sbs.TASK_KINDS} <= names
      assert {f'sbs_{ds}_gold_{mode}', f'sbs_{ds}_llm_{mode}'} <= names
      assert f'sbs_{ds}_gold_50pct_{mode}' not in names
