"""SVAMP equation evaluator: agreement with SVAMP.json and refusal of bad input."""
import ast
import fractions
import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from distill_sbs.metrics import svamp

F = fractions.Fraction
# SVAMP.json's one inconsistent row: '( ( 4.0 - 2.0 ) + 3.0 )' is 5, Answer says 1.0.
KNOWN_BAD_GOLD = {'chal-680'}


def reference_value(expr: str) -> F:
  """Independent reference for trusted gold strings: Python's own parser (ast,
  never eval) over exact fractions."""
  def ev(node):
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
      return F(repr(node.value)) if isinstance(node.value, float) else F(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
      v = ev(node.operand)
      return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
      a, b = ev(node.left), ev(node.right)
      ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b,
             ast.Mult: lambda: a * b, ast.Div: lambda: a / b}
      return ops[type(node.op)]()
    raise ValueError(f'unsupported node {ast.dump(node)}')
  return ev(ast.parse(expr, mode='eval'))


@pytest.fixture(scope='module')
def svamp_json(raw_dir):
  with open(raw_dir / 'svamp' / 'SVAMP.json') as f:
    return json.load(f)


def test_agrees_with_gold_answer_for_every_equation(svamp_json):
  assert len(svamp_json) == 1000
  bad = []
  for item in svamp_json:
    value = svamp.evaluate_equation(item['Equation'])
    assert value is not None, item
    assert value == reference_value(item['Equation']), item
    if not math.isclose(float(value), item['Answer'], rel_tol=1e-6, abs_tol=1e-9):
      bad.append(item['ID'])
    assert svamp.equations_equal(item['Equation'], float(item['Answer'])) == (
        item['ID'] not in KNOWN_BAD_GOLD)
  assert set(bad) == KNOWN_BAD_GOLD
  # The inconsistency is in the data, not the evaluator: (4 - 2) + 3 = 5.
  assert reference_value('( ( 4.0 - 2.0 ) + 3.0 )') == 5


def test_gold_files_evaluate(raw_dir):
  for split in ('train', 'test'):
    with open(raw_dir / 'svamp' / f'svamp_{split}.json') as f:
      for line in f:
        eq = json.loads(line)['label']
        assert svamp.evaluate_equation(eq) == reference_value(eq)


@pytest.mark.parametrize('text,value', [
    ('( 84.0 / 2.0 )', F(42)), ('(10 * 45)', F(450)), ('3 × 4 ÷ 2', F(6)),
    ('-(-3)', F(3)), ('1 - 2 - 3', F(-4)), ('2 + 3 * 4', F(14)),
    ('(2 + 3) * 4', F(20)), ('.5 + 1.25', F(7, 4)), ('1,000 / 4', F(250)),
    ('(1 / 3) * 3', F(1)), ('12 / 4 / 3', F(1)), ('(84 / 2).', F(42)),
])
def test_values(text, value):
  assert svamp.evaluate_equation(text) == value


@pytest.mark.parametrize('text', [
    '__import__("os").system("true")', 'open("/etc/passwd").read()', '2**10',
    '9' * 40, '(' * 200 + '1' + ')' * 200, '-' * 5000 + '1', '1/0', '(1 + 2',
    '1 + 2)', '', '   ', 'x', '1e5', '1..2', '3 4', 'lambda: 1', '[1]', '1 + ',
    '(29/2) and (30/2)', None, 12, '1' * 2000,
])
def test_malformed_or_malicious_is_none_not_crash(text):
  assert svamp.evaluate_equation(text) is None
  assert svamp.equation_accuracy(['(1 + 1)'], [text]) == {'accuracy': 0.0}


def test_equation_accuracy():
  assert svamp.equation_accuracy(['(2 + 2)', '(3 * 3)', '( 1.0 / 2.0 )'],
                                 ['4', '(10 - 1)', '2']) == {'accuracy': 200 / 3}
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    svamp.equation_accuracy(['1', '2'], ['1'])


_num = st.fractions(min_value=-1000, max_value=1000, max_denominator=8).map(
    lambda q: f'({float(q)!r})' if q < 0 else repr(float(q)))


def _expr(children):
  return st.tuples(children, st.sampled_from(['+', '-', '*', '/']), children).map(
      lambda t: f'({t[0]} {t[1]} {t[2]})')


@settings(max_examples=200, deadline=None)
@given(st.recursive(_num, _expr, max_leaves=12))
def test_matches_reference_on_random_expressions(expr):
  try:
    ref = reference_value(expr)
  except ZeroDivisionError:
    assert svamp.evaluate_equation(expr) is None
    return
  assert svamp.evaluate_equation(expr) == ref
