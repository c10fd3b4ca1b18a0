"""Helpers for the teacher tests: a deterministic fake cqa teacher, output scans."""
import hashlib
import json
import os
import re

from distill_sbs.data import formats
from distill_sbs.data import schema

SECRET = 'sk-test-DO-NOT-LEAK-4f2a9c'
KEY_ENV = 'DSBS_TEST_TEACHER_KEY'


def _h(text: str) -> int:
  return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def fate(inputs: str) -> str:
  """What the fake teacher does with one query: 'right', 'wrong' or 'garbage'."""
  h = _h(inputs)
  if h % 10 == 0 or h % 10 == 5:
    return 'garbage'
  if h % 4 == 1:
    return 'wrong'
  return 'right'


def query_of(prompt: str) -> str:
  """The last few-shot turn's input (cqa / svamp prompt layout)."""
  return prompt.rsplit('Q: ', 1)[1].rsplit('\nA:', 1)[0]


class CqaTeacher:
  """Deterministic fake teacher for cqa prompts: answers by `fate`."""

  def __init__(self, gold: dict):
    self.gold = gold  # inputs -> answer text

  def __call__(self, prompt: str, body: dict) -> str:
    del body
    q = query_of(prompt)
    choices = re.findall(r'^\(([a-e])\) (.*)$', q, flags=re.M)
    answer = self.gold[q]
    idx = [c for _, c in choices].index(answer)
    f = fate(q)
    if f == 'garbage':
      return 'I cannot tell which one it is.\n\nQ: something else'
    if f == 'wrong':
      idx = (idx + 1) % len(choices)
    letter, text = choices[idx]
    return (f'The question asks about {text}. Reasoning {_h(q) % 97}. '
            f'So the answer is ({letter}) {text}.\n\nQ: an invented next turn')


def all_output_bytes(out_dir) -> list[tuple[str, bytes]]:
  out = []
  for root, _, files in os.walk(out_dir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out.append((path, f.read()))
  return out
