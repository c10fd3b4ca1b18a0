"""`prepare`: splits, manifest (teacher accuracy, hashes), errors, atomic writes."""
import ast
import fractions
import glob
import hashlib
import json
import os
import re

import numpy as np
import pytest

from distill_sbs.data import formats
from distill_sbs.data import prepare
from distill_sbs.data import schema
from distill_sbs.data import sources

N = 200  # tests/conftest.py SBS_TEST_MAX_ROWS
DATASETS = ('cqa', 'svamp', 'esnli', 'anli1')
NLI = ('entailment', 'neutral', 'contradiction')


# ---- an independent re-statement of the paper's parsing and metric ------------

def paper_label(ds, out):
  """The label as the paper's data_utils.py parses it (' ' on failure)."""
  if ds == 'cqa':
    tail = out.split('Q:')[0].rstrip().split('So the answer is')
    if len(tail) != 2:
      return ' '
    m = re.split(r'\(.\)', tail[1])
    if len(m) < 2 or not m[1].strip():
      return ' '
    lab = m[1].strip()
    return lab[:-1] if lab[-1] == '.' else lab
  if ds == 'svamp':
    parts = out.split('Q:')[0].rstrip().split('The answer is')
    if len(parts) != 2:
      return ' '
    m = re.search(r'\(.*\)', parts[1])
    return m.group(0) if m else ' '
  if ds == 'anli1':
    parts = out.split('Premise:')[0].rstrip().split('So the answer is')
    return parts[1].lstrip()[:-1] if len(parts) == 2 else ''
  parts = out.split('Answer: ')
  return parts[1].split('Premise')[0].rstrip() if len(parts) > 1 else ' '


def frac_value(expr):
  try:
    tree = ast.parse(expr.strip(), mode='eval')
  except SyntaxError:
    return None

  def ev(n):
    if isinstance(n, ast.Expression):
      return ev(n.body)
    if isinstance(n, ast.Constant) and type(n.value) in (int, float):
      return fractions.Fraction(repr(n.value))
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
      return -ev(n.operand)
    if isinstance(n, ast.BinOp) and type(n.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
      a, b = ev(n.left), ev(n.right)
      return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b,
              ast.Div: a / b if b else None}[type(n.op)] if None not in (a, b) else None
    return None
  try:
    return ev(tree)
  except TypeError:
    return None


def load_raw(raw_dir, ds, split, max_rows=None):
  with open(raw_dir / ds / f'{ds}_{split}.json') as f:
    rows = [json.loads(l) for l in f][:max_rows]
  files = sorted(glob.glob(str(raw_dir / ds / 'llm' / f'{split}_CoT_*.json')),
                 key=lambda p: int(p.rsplit('_', 1)[1].split('.')[0]))
  outs = [o for p in files for o in json.load(open(p))][:len(rows)]
  return rows, outs


def gold(ds, row):
  if ds == 'cqa':
    return row['answer']
  if ds == 'svamp':
    return row['label']
  return NLI[row['label']]


def independent_accuracy(ds, rows, outs):
  hits = 0
  for row, out in zip(rows, outs):
    pred, g = paper_label(ds, out), gold(ds, row)
    if ds == 'svamp':
      pv, gv = frac_value(pred), frac_value(g)
      hits += pv is not None and pv == gv
    else:
      hits += pred == g
  return 100.0 * hits / len(rows)


# ---- tests --------------------------------------------------------------------

@pytest.mark.parametrize('ds,expected', [('cqa', 77.2), ('svamp', 74.0),
                                         ('anli1', 65.6), ('esnli', 73.0)])
def test_full_test_split_teacher_accuracy_matches_paper(raw_dir, ds, expected):
  records = prepare._load_source_split(str(raw_dir), ds, 'test', None, {})
  acc = prepare._split_stats(ds, records)['teacher_accuracy']
  rows, outs = load_raw(raw_dir, ds, 'test')
  assert acc == pytest.approx(independent_accuracy(ds, rows, outs), abs=1e-9)
  assert round(acc, 1) == expected


@pytest.mark.parametrize('ds', DATASETS)
def test_manifest_counts_accuracy_and_hashes(sbs_data_dir, raw_dir, ds):
  m = json.loads((sbs_data_dir / ds / 'manifest.json').read_text())
  pool_split = 'train' if ds in ('cqa', 'svamp') else 'valid'
  pool_rows, pool_outs = load_raw(raw_dir, ds, pool_split, N)
  perm = np.random.RandomState(0).permutation(N)
  held = sorted(perm[:N // 10])
  kept = sorted(perm[N // 10:])
  test_rows, test_outs = load_raw(raw_dir, ds, 'test', N)
  expected = {
      'train': ([pool_rows[i] for i in kept], [pool_outs[i] for i in kept]),
      'validation': ([pool_rows[i] for i in held], [pool_outs[i] for i in held]),
      'test': (test_rows, test_outs),
  }
  assert m['split_seed'] == 0 and m['max_rows'] == N
  for split, (rows, outs) in expected.items():
    s = m['splits'][split]
    assert s['rows'] == len(rows)
    assert s['teacher_accuracy'] == pytest.approx(
        independent_accuracy(ds, rows, outs), abs=1e-9), split
    recs = list(schema.read_records(str(sbs_data_dir / ds / f'{split}.tfrecord-*')))
    assert len(recs) == len(rows)
    assert [r['inputs'] for r in recs] == [formats.format_input(ds, r) for r in rows]
    assert [r['label'] for r in recs] == [gold(ds, r) for r in rows]
    assert [r['llm_output'] for r in recs] == outs
    fails = sum(r['llm_label'] == '' for r in recs)
    assert s['parse_failures'] == fails
  for rel, digest in m['source_files'].items():
    assert hashlib.sha256((raw_dir / rel).read_bytes()).hexdigest() == digest
  assert f'{ds}/{ds}_test.json' in m['source_files']


def test_ids_unique_and_stable(sbs_data_dir):
  for ds in DATASETS:
    ids = [r['id'] for s in ('train', 'validation', 'test') for r in
           schema.read_records(str(sbs_data_dir / ds / f'{s}.tfrecord-*'))]
    assert len(ids) == len(set(ids)) == 2 * N


# ---- bad input and atomicity ----------------------------------------------------

def _write_raw(root, train_rows, test_rows, train_outs, test_outs):
  d = root / 'svamp'
  (d / 'llm').mkdir(parents=True, exist_ok=True)
  (d / 'svamp_train.json').write_text(''.join(
      (r if isinstance(r, str) else json.dumps(r)) + '\n' for r in train_rows))
  (d / 'svamp_test.json').write_text(''.join(json.dumps(r) + '\n' for r in test_rows))
  (d / 'llm' / 'train_CoT_0.json').write_text(json.dumps(train_outs))
  (d / 'llm' / 'test_CoT_0.json').write_text(json.dumps(test_outs))


def _rows(n):
  return [{'input': f'Tom has {i} apples.\nHow many?', 'label': f'( {i}.0 + 1.0 )'}
          for i in range(n)]


def _outs(n):
  return [f'He has {i}. The answer is ({i} + 1).\n\nQ: more' for i in range(n)]


def _snapshot(d):
  return {p: hashlib.sha256(open(p, 'rb').read()).hexdigest()
          for p in glob.glob(os.path.join(d, '**', '*'), recursive=True)
          if os.path.isfile(p)}


@pytest.fixture
def good_prepared(tmp_path):
  raw, data = tmp_path / 'raw', tmp_path / 'data'
  _write_raw(raw, _rows(20), _rows(5), _outs(20), _outs(5))
  m = prepare.prepare_dataset(str(raw), 'svamp', str(data), num_shards=2)
  assert m['splits']['train']['rows'] == 18 and m['splits']['test']['rows'] == 5
  assert m['splits']['test']['teacher_accuracy'] == 100.0
  return raw, data, _snapshot(str(data))


@pytest.mark.parametrize('breakage,match', [
    ('json', r'svamp_train\.json:3: malformed JSON line'),
    ('count', r'train_CoT_\*\.json: 19 completions in 1 files but .*svamp_train\.json '
              r'has 20 gold rows'),
    ('field', r"svamp_train\.json:4: svamp row is missing field 'label'"),
    ('type', r'train_CoT_0\.json\[2\]: completion must be a string'),
])
def test_bad_input_names_file_and_line_and_keeps_old_shards(good_prepared, breakage,
                                                            match, capsys):
  raw, data, before = good_prepared
  rows, outs = _rows(20), _outs(20)
  if breakage == 'json':
    rows[2] = '{"input": "broken", "label": '
  elif breakage == 'count':
    outs = outs[:-1]
  elif breakage == 'field':
    del rows[3]['label']
  else:
    outs[2] = 7
  _write_raw(raw, rows, _rows(5), outs, _outs(5))
  with pytest.raises(sources.RawDataError, match=match):
    prepare.prepare_dataset(str(raw), 'svamp', str(data), num_shards=2)
  assert prepare.main(['--raw_dir', str(raw), '--data_dir', str(data),
                       '--datasets', 'svamp']) == 1
  assert re.search(match, capsys.readouterr().err)
  assert _snapshot(str(data)) == before


def test_failed_shard_write_leaves_earlier_shards_intact(good_prepared):
  _, data, before = good_prepared

  def records():
    yield {'id': 'a', 'inputs': 'x', 'label': 'y'}
    yield {'id': 'b', 'inputs': 12345}  # not text: fails mid-write
  with pytest.raises(TypeError, match="field 'inputs' of record 'b'"):
    schema.write_shards(str(data / 'svamp'), 'train', records(), num_shards=2)
  assert _snapshot(str(data)) == before
  assert not glob.glob(str(data / 'svamp' / '*.tmp-*'))


def test_split_files_lists_complete_shards_only(tmp_path):
  """Every record reader's shard listing: sorted complete shards of the split,
  never an in-progress `.tmp-` file; none names the pattern and the hint."""
  files = schema.write_shards(str(tmp_path), 'train',
                              [{'id': str(i), 'inputs': 'x', 'label': 'y'} for i in range(4)],
                              num_shards=2)
  (tmp_path / 'train.tfrecord-00000-of-00002.tmp-123').write_bytes(b'partial')
  schema.write_shards(str(tmp_path), 'test', [{'id': 't', 'inputs': 'x', 'label': 'y'}])
  assert schema.split_files(str(tmp_path), 'train') == sorted(files)
  assert len(files) == 2
  with pytest.raises(FileNotFoundError, match=r"validation\.tfrecord-\*-of-\*.*; run prepare"):
    schema.split_files(str(tmp_path), 'validation', 'run prepare')


def test_cli_prints_summary(good_prepared, capsys):
  raw, data, _ = good_prepared
  assert prepare.main(['--raw_dir', str(raw), '--data_dir', str(data / 'again'),
                       '--datasets', 'svamp', '--num_shards', '3']) == 0
  out = capsys.readouterr().out
  assert re.search(r'svamp\s+train\s+18\s+100\.0\s+0', out)
  assert re.search(r'svamp\s+validation\s+2\s+100\.0', out)
  assert len(glob.glob(str(data / 'again' / 'svamp' / 'train.tfrecord-*-of-00003'))) == 3


def test_supplied_train_file_used_as_is(tmp_path, raw_dir):
  """e-SNLI layout with a user-supplied train file: train as is, valid = validation."""
  d = tmp_path / 'raw' / 'anli1'
  (d / 'llm').mkdir(parents=True)
  rows = [json.loads(l) for l in open(raw_dir / 'anli1' / 'anli1_valid.json')][:30]
  outs = json.load(open(raw_dir / 'anli1' / 'llm' / 'valid_CoT_0.json'))[:30]
  for split, sl in (('train', slice(0, 12)), ('valid', slice(12, 20)),
                    ('test', slice(20, 30))):
    (d / f'anli1_{split}.json').write_text(
        ''.join(json.dumps(r) + '\n' for r in rows[sl]))
    (d / 'llm' / f'{split}_CoT_0.json').write_text(json.dumps(outs[sl]))
  m = prepare.prepare_dataset(str(tmp_path / 'raw'), 'anli1', str(tmp_path / 'data'))
  assert {s: m['splits'][s]['rows'] for s in m['splits']} == {
      'train': 12, 'validation': 8, 'test': 10}
  assert m['splits']['train']['origin'] == 'train'
  recs = list(schema.read_records(str(tmp_path / 'data' / 'anli1' / 'train.tfrecord-*')))
  assert [r['id'] for r in recs] == [r['uid'] for r in rows[:12]]
