"""SVAMP: numeric equality of evaluated equations, never `eval`.

`evaluate_equation(text)` is a small recursive-descent parser over exact
`fractions.Fraction` arithmetic:
  expr   := term (('+' | '-') term)*
  term   := unary (('*' | '×' | '/' | '÷') unary)*
  unary  := ('-' | '+') unary | atom
  atom   := number | '(' expr ')'
  number := digits ['.' digits] | '.' digits      (commas in digits allowed)
Anything else (names, '**', calls, nesting deeper than `MAX_DEPTH`, numbers
longer than `MAX_NUMBER_CHARS`, division by zero, input over `MAX_CHARS`)
yields None, which counts as wrong.
"""
from __future__ import annotations

import fractions
import math
from typing import Optional, Sequence, Union

Number = fractions.Fraction
MAX_CHARS = 1000
MAX_DEPTH = 50
MAX_NUMBER_CHARS = 30
_MUL = ('*', '×', 'x')
_DIV = ('/', '÷')


class _ParseError(Exception):
  pass


class _Parser:
  """One pass over the text; every method returns an exact Fraction."""

  def __init__(self, text: str):
    self.s = text
    self.i = 0
    self.depth = 0

  def _skip(self) -> None:
    while self.i < len(self.s) and self.s[self.i].isspace():
      self.i += 1

  def _peek(self) -> str:
    self._skip()
    return self.s[self.i] if self.i < len(self.s) else ''

  def parse(self) -> Number:
    v = self._expr()
    if self._peek():
      raise _ParseError(f'unexpected {self._peek()!r} at {self.i}')
    return v

  def _expr(self) -> Number:
    v = self._term()
    while self._peek() in ('+', '-'):
      op = self.s[self.i]
      self.i += 1
      r = self._term()
      v = v + r if op == '+' else v - r
    return v

  def _term(self) -> Number:
    v = self._unary()
    while True:
      c = self._peek()
      if c in _MUL or c in _DIV:
        if c == '*' and self.s[self.i + 1:self.i + 2] == '*':
          raise _ParseError('power is not supported')
        self.i += 1
        r = self._unary()
        if c in _MUL:
          v = v * r
        elif r == 0:
          raise _ParseError('division by zero')
        else:
          v = v / r
      else:
        return v

  def _enter(self) -> None:
    self.depth += 1
    if self.depth > MAX_DEPTH:
      raise _ParseError('nesting too deep')

  def _unary(self) -> Number:
    c = self._peek()
    if c in ('-', '+'):
      self.i += 1
      self._enter()
      v = self._unary()
      self.depth -= 1
      return -v if c == '-' else v
    return self._atom()

  def _atom(self) -> Number:
    c = self._peek()
    if c == '(':
      self.i += 1
      self._enter()
      v = self._expr()
      self.depth -= 1
      if self._peek() != ')':
        raise _ParseError(f'missing ) at {self.i}')
      self.i += 1
      return v
    return self._number()

  def _number(self) -> Number:
    start = self.i
    while self.i < len(self.s) and (self.s[self.i].isdigit() and self.s[self.i].isascii()
                                    or self.s[self.i] in '.,'):
      self.i += 1
    tok = self.s[start:self.i].replace(',', '')
    if not tok or len(tok) > MAX_NUMBER_CHARS or tok.count('.') > 1 or tok == '.':
      raise _ParseError(f'expected a number at {start}')
    return Number(tok)


def evaluate_equation(text: str) -> Optional[Number]:
  """The exact value of an arithmetic expression, or None when it is not one."""
  if not isinstance(text, str) or len(text) > MAX_CHARS:
    return None
  try:
    return _Parser(text.strip().rstrip('.').strip()).parse()
  except (_ParseError, ValueError, ZeroDivisionError, RecursionError):
    return None


def equations_equal(a: Union[str, float, None], b: Union[str, float, None],
                    rel_tol: float = 1e-6) -> bool:
  """True when both sides evaluate and agree (exactly, or within `rel_tol` when a
  side is a float such as SVAMP's `Answer`)."""
  va = evaluate_equation(a) if isinstance(a, str) else a
  vb = evaluate_equation(b) if isinstance(b, str) else b
  if va is None or vb is None:
    return False
  if isinstance(va, Number) and isinstance(vb, Number):
    return va == vb
  return math.isclose(float(va), float(vb), rel_tol=rel_tol, abs_tol=1e-9)


def equation_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """seqio metric: % of predictions whose value equals the target's value."""
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions')
  if not targets:
    return {'accuracy': 0.0}
  hits = sum(equations_equal(t, p) for t, p in zip(targets, predictions))
  return {'accuracy': 100.0 * hits / len(targets)}
