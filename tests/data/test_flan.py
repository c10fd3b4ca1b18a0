"""Flan templates: every template renders real examples; golden files; errors."""
import json
import os
import pathlib

import pytest

from distill_sbs.data import flan
from distill_sbs.data import formats
from distill_sbs.data import prepare
from distill_sbs.data import sources
from distill_sbs.data import templates

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / 'golden' / 'flan'
SPLIT = {'cqa': 'train', 'svamp': 'train', 'esnli': 'valid', 'anli1': 'valid'}
NUM_ROWS = 6


@pytest.fixture(scope='module')
def records(raw_dir):
  """The first rows of each dataset as prepared records (with PaLM rationales)."""
  out = {}
  for ds, split in SPLIT.items():
    rows = sources.read_jsonl(sources.gold_path(str(raw_dir), ds, split), NUM_ROWS)
    comps = sources.read_completions(
        sources.completion_files(str(raw_dir), ds, split)[:1])
    out[ds] = [prepare.make_record(ds, r, comps[i][0],
                                   formats.row_id(ds, r, split, i))
               for i, r in enumerate(rows)]
  return out


@pytest.mark.parametrize('ds', formats.DATASETS)
def test_every_template_renders_first_examples(ds, records):
  spec = flan.load_spec(ds)
  recs = records[ds]
  for variant in flan.VARIANTS:
    v = spec.variant(variant)
    assert len(v.templates) >= 2, (ds, variant)
    for ti, t in enumerate(v.templates):
      for i, rec in enumerate(recs):
        pool = recs[:i] + recs[i + 1:]
        ex, = flan.build_examples(spec, variant, [rec], pool, template_index=ti)
        fields = flan.record_fields(ds, rec)
        for text in (ex['inputs'], ex['targets']):
          # Nothing left unfilled: no placeholder of the dataset's fields.
          assert not [f for f in flan.FIELDS[ds] if '{' + f + '}' in text]
          assert '{' not in text.replace('{{', '')
        assert ex['inputs'].endswith(templates.render(t.input_template, fields))
        if variant == 'fs':
          # k exemplars, each followed by the separator, then the query.
          assert ex['inputs'].count(v.separator) >= v.k
          # The query is never one of its own exemplars.
          query_text = templates.render(t.input_template, fields)
          assert ex['inputs'].count(query_text) == 1
        if variant == 'cot':
          assert ex['targets'] == f"{fields['rationale']} So the answer is {rec['label']}."
        else:
          assert ex['targets'] == rec['label']
        if ds in ('cqa', 'esnli', 'anli1') and '{options' in t.input_template:
          assert 'OPTIONS:\n- ' in ex['inputs'] or '(a) ' in ex['inputs']


def _golden_cases(records):
  out = {}
  for variant in flan.VARIANTS:
    cases = []
    for ds in formats.DATASETS:
      recs = records[ds]
      ex, = flan.build_examples(flan.load_spec(ds), variant, recs[:1], recs[1:],
                                template_index=0, seed=0)
      cases.append({'dataset': ds, 'inputs': ex['inputs'], 'targets': ex['targets']})
    out[variant] = cases
  return out


@pytest.mark.parametrize('variant', flan.VARIANTS)
def test_golden_render_per_variant(variant, records):
  """Template 0 of each dataset, first example (set FLAN_UPDATE_GOLDEN=1 to
  rewrite after a deliberate template change, then review the diff)."""
  got = _golden_cases(records)[variant]
  path = GOLDEN / f'{variant}.json'
  if os.environ.get('FLAN_UPDATE_GOLDEN'):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(got, indent=1, ensure_ascii=False) + '\n',
                    encoding='utf-8')
  assert got == json.loads(path.read_text(encoding='utf-8'))


@pytest.mark.parametrize('ds', formats.DATASETS)
def test_record_fields_round_trip(ds, records):
  for rec in records[ds]:
    fields = flan.record_fields(ds, rec)
    row = dict(fields)
    if ds == 'svamp':
      row = {'input': fields['body'] + '\n' + fields['question']}
    assert formats.format_input(ds, row) == rec['inputs']
    if ds == 'cqa':
      assert fields['choices'][ord(fields['answer_letter']) - ord('a')] == rec['label']
      assert fields['options'].splitlines()[1:] == ['- ' + c for c in fields['choices']]


def test_template_choice_is_seeded_and_covers_templates(records):
  spec = flan.load_spec('cqa')
  recs = [dict(r, id=f'{r["id"]}-{j}') for j in range(20) for r in records['cqa']]
  a = flan.build_examples(spec, 'zs', recs, seed=0)
  assert a == flan.build_examples(spec, 'zs', recs, seed=0)
  assert a != flan.build_examples(spec, 'zs', recs, seed=1)
  assert {e['template'] for e in a} == {str(i) for i in range(len(spec.variant('zs').templates))}
  # Exemplar counts follow k.
  fs = flan.build_examples(spec, 'fs', recs[:3], recs, k=2, template_index=0)
  assert all(e['inputs'].count('\nAnswer: ') == 2 for e in fs)


def test_cot_skips_missing_rationale_unless_kept(records):
  spec = flan.load_spec('anli1')
  rec = dict(records['anli1'][0], rationale='')
  assert flan.build_examples(spec, 'cot', [rec]) == []
  ex, = flan.build_examples(spec, 'cot', [rec], keep_without_rationale=True,
                            template_index=0)
  assert ex['targets'] == f"So the answer is {rec['label']}."


def test_spec_errors_name_the_problem(tmp_path):
  good = json.loads((flan.templates_dir() / 'cqa.json').read_text())
  bad = dict(good, zs={'templates': [{'input': '{question} {premise}', 'target': '{answer}'}]})
  with pytest.raises(flan.FlanError, match=r"zs.templates\[0\].*unknown field.*premise"):
    flan.parse_spec(bad, 'x.json')
  bad = dict(good, cot={'templates': [{'input': '{question}', 'target': '{rationale}'}]})
  with pytest.raises(flan.FlanError, match='CoT target must contain'):
    flan.parse_spec(bad, 'x.json')
  bad = dict(good, fs=dict(good['fs'], k=0))
  with pytest.raises(flan.FlanError, match=r'fs.k'):
    flan.parse_spec(bad, 'x.json')
  p = tmp_path / 'cqa.json'
  p.write_text('{"dataset": "cqa",\n "zs": ]')
  with pytest.raises(flan.FlanError, match=r'cqa.json:2: malformed JSON'):
    flan.load_spec('cqa', str(p))
  with pytest.raises(flan.FlanError, match="cqa record 'r1'"):
    flan.record_fields('cqa', {'id': 'r1', 'inputs': 'no choices here'})


def test_flan_few_shot_is_the_shared_template_engine(records):
  """Few-shot inputs are exactly `templates.few_shot` (the teacher's builder)."""
  spec = flan.load_spec('esnli')
  v = spec.variant('fs')
  recs = records['esnli']
  ex, = flan.build_examples(spec, 'fs', recs[:1], recs[1:4], k=3, template_index=1)
  shots = [flan.record_fields('esnli', r) for r in recs[1:4]]
  query = flan.record_fields('esnli', recs[0])
  expected = templates.few_shot(shots, query, template=v.templates[1], prefix=v.prefix,
                                separator=v.separator, joiner=v.joiner)
  # Exemplars are drawn in a seeded order; the set of shots matches.
  assert sorted(ex['inputs'].split(v.separator)) == sorted(expected.split(v.separator))
