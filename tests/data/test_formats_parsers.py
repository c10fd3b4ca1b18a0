"""Input formatting and completion parsing per dataset (the paper's rules)."""
import pytest

from distill_sbs.data import formats
from distill_sbs.data import parsers

CQA_ROW = {'id': 'q1', 'question': 'Where do beavers get supplies?',
           'choices': ['british columbia', 'body of water', 'wooded area', 'pay debts',
                       'zoo'], 'answer': 'wooded area'}


def test_format_input_per_dataset():
  assert formats.format_input('cqa', CQA_ROW) == (
      'Where do beavers get supplies?\nAnswer Choices:\n(a) british columbia\n'
      '(b) body of water\n(c) wooded area\n(d) pay debts\n(e) zoo')
  assert formats.format_input('svamp', {'input': 'Body.\nQuestion?', 'label': '(1)'}
                              ) == 'Body.\nQuestion?'
  assert formats.format_input('svamp', {'Body': 'B', 'Question': 'Q'}) == 'B\nQ'
  row = {'premise': 'A man sleeps.', 'hypothesis': 'A person rests.', 'label': 0}
  for ds in ('esnli', 'anli1'):
    assert formats.format_input(ds, row) == (
        'Premise: A man sleeps.\nHypothesis: A person rests.')
    assert formats.gold_label(ds, row) == 'entailment'
    assert formats.gold_label(ds, dict(row, label=2)) == 'contradiction'
    assert formats.LABELS[ds] == ('entailment', 'neutral', 'contradiction')
  assert formats.gold_label('cqa', CQA_ROW) == 'wooded area'
  assert formats.gold_label('svamp', {'input': 'x', 'label': '( 1.0 + 2.0 )'}
                            ) == '( 1.0 + 2.0 )'


def test_format_errors_name_the_field():
  with pytest.raises(formats.RowError, match="'choices'"):
    formats.format_input('cqa', {'question': 'q', 'answer': 'a'})
  with pytest.raises(formats.RowError, match="'hypothesis'"):
    formats.format_input('esnli', {'premise': 'p', 'label': 1})
  with pytest.raises(formats.RowError, match='0, 1 or 2'):
    formats.gold_label('anli1', {'premise': 'p', 'hypothesis': 'h', 'label': 7})
  with pytest.raises(ValueError, match='unknown dataset'):
    formats.format_input('mnli', {})


@pytest.mark.parametrize('ds,text,rationale,label', [
    ('cqa', 'Beavers use wood. So the answer is (c) wooded area.\n\nQ: What is red?\n'
     'Answer Choices:\n(a) x\nA: Blood. So the answer is (a) x.',
     'Beavers use wood.', 'wooded area'),
    ('svamp', 'They put 10 seeds in 45 beds. The answer is (10 * 45).\n\nQ: There are '
     '15 trees. The answer is (21 - 15).', 'They put 10 seeds in 45 beds.', '(10 * 45)'),
    ('svamp', 'Half of 84. The answer is ((84 / 2) + 1).', 'Half of 84.',
     '((84 / 2) + 1)'),
    ('anli1', 'Oxford Street is in London. So the answer is contradiction.\n\nPremise: '
     'x\nHypothesis: y\nAnswer: So the answer is neutral.',
     'Oxford Street is in London.', 'contradiction'),
    ('esnli', 'Not all churches have cracks.\nAnswer: neutral\n\nPremise: A choir.\n'
     'Hypothesis: B.\nReasoning', 'Not all churches have cracks.', 'neutral'),
])
def test_parse_completion(ds, text, rationale, label):
  p = parsers.parse_completion(ds, text)
  assert (p.rationale, p.label, p.ok, p.error) == (rationale, label, True, '')


@pytest.mark.parametrize('ds,text,rationale', [
    ('cqa', 'I do not know.', ''),
    ('cqa', 'Hmm. So the answer is wooded area.', 'Hmm.'),
    ('svamp', 'They add. The answer is 12.', 'They add.'),
    ('svamp', 'No answer at all', ''),
    ('anli1', 'It is unclear whether it follows.', ''),
    ('esnli', 'It is unclear.', 'It is unclear.'),
])
def test_parse_failures_are_flagged(ds, text, rationale):
  p = parsers.parse_completion(ds, text)
  assert not p.ok and p.label == '' and p.error
  assert p.rationale == rationale


def test_format_completion_round_trips():
  for ds, row, label in [('cqa', CQA_ROW, 'wooded area'), ('svamp', None, '(3 + 4)'),
                         ('anli1', None, 'neutral'), ('esnli', None, 'entailment')]:
    text = formats.format_completion(ds, 'Because reasons.', label, row)
    p = parsers.parse_completion(ds, text)
    assert (p.rationale, p.label, p.ok) == ('Because reasons.', label, True)
