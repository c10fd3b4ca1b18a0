"""Flan-style instruction templates: zero-shot, few-shot and chain-of-thought.

Template files `tasks/data/flan/{ds}.json` hold, per variant ('zs', 'fs',
'cot'), several `{"input": ..., "target": ...}` templates (syntax of
`distill_sbs.data.templates`, the engine the teacher's few-shot prompts use
too) plus `k` (exemplars), `prefix`, `separator` (between shots) and `joiner`
(between an exemplar's input and target). Fields come from a prepared record
(`schema`): its `inputs` text is parsed back into the dataset's parts
(`formats` layout), with options formatted for multiple choice and NLI:

  all      inputs, answer (gold label), rationale (teacher; '' if none)
  cqa      question, choices, options ('OPTIONS:\\n- a\\n- b ...'),
           options_lettered ('(a) x\\n(b) y ...'), answer_letter
  svamp    body, question, problem
  nli      premise, hypothesis, options (the three label names)

CoT targets end in ' So the answer is {answer}.' so `tasks/sbs.extract_cot_label`
recovers the label. Template and exemplar choice are seeded per example id.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import random
import re
from typing import Any, Mapping, Optional, Sequence

from distill_sbs.data import formats
from distill_sbs.data import templates

VARIANTS = ('zs', 'fs', 'cot')
OPTIONS_HEADER = 'OPTIONS:'
COT_MARKER = 'So the answer is {answer}'
_COMMON = ('inputs', 'answer', 'rationale')
FIELDS: dict[str, tuple[str, ...]] = {
    'cqa': _COMMON + ('question', 'options', 'options_lettered', 'answer_letter'),
    'svamp': _COMMON + ('body', 'question', 'problem'),
    'esnli': _COMMON + ('premise', 'hypothesis', 'options'),
    'anli1': _COMMON + ('premise', 'hypothesis', 'options'),
}
_CHOICE_LINE = re.compile(r'^\(([a-e])\) (.*)$')


class FlanError(ValueError):
  """A template file or a record does not fit the Flan templates."""


def templates_dir() -> pathlib.Path:
  """`tasks/data/flan` (the `distill_sbs.tasks` package data)."""
  return templates.package_data_dir('flan')


@dataclasses.dataclass(frozen=True)
class Variant:
  """The templates of one variant and how shots are joined."""
  name: str
  templates: tuple[templates.Template, ...]
  k: int = 0
  prefix: str = ''
  separator: str = '\n\n'
  joiner: str = ' '


@dataclasses.dataclass(frozen=True)
class FlanSpec:
  dataset: str
  variants: Mapping[str, Variant]
  source: str = '<dict>'

  def variant(self, name: str) -> Variant:
    if name not in self.variants:
      raise FlanError(f'{self.source}: no variant {name!r}; expected one of {VARIANTS}')
    return self.variants[name]


def _parse_variant(ds: str, name: str, obj: Any, source: str) -> Variant:
  where = f'{source}: {name}'
  if not isinstance(obj, Mapping) or not isinstance(obj.get('templates'), list) \
      or not obj['templates']:
    raise FlanError(f'{where}: expected an object with a non-empty "templates" list')
  out = []
  for i, t in enumerate(obj['templates']):
    if not isinstance(t, Mapping) or set(t) != {'input', 'target'}:
      raise FlanError(f'{where}.templates[{i}]: expected {{"input", "target"}}, '
                      f'got {t!r}')
    try:
      tpl = templates.Template(t['input'], t['target'])
      used = (templates.placeholders(tpl.input_template) +
              templates.placeholders(tpl.target_template))
    except templates.TemplateError as e:
      raise FlanError(f'{where}.templates[{i}]: {e}') from None
    unknown = sorted(set(used) - set(FIELDS[ds]))
    if unknown:
      raise FlanError(f'{where}.templates[{i}]: unknown field(s) {unknown}; '
                      f'{ds} has {list(FIELDS[ds])}')
    if name == 'cot' and COT_MARKER not in tpl.target_template:
      raise FlanError(f'{where}.templates[{i}]: a CoT target must contain '
                      f'{COT_MARKER!r}')
    out.append(tpl)
  k = obj.get('k', 0)
  if not isinstance(k, int) or k < 0 or (name == 'fs' and k < 1):
    raise FlanError(f'{where}.k: expected an integer >= {int(name == "fs")}, got {k!r}')
  kw = {f: obj[f] for f in ('prefix', 'separator', 'joiner') if f in obj}
  for f, v in kw.items():
    if not isinstance(v, str):
      raise FlanError(f'{where}.{f}: expected a string, got {v!r}')
  return Variant(name, tuple(out), k, **kw)


def parse_spec(obj: Mapping[str, Any], source: str = '<dict>') -> FlanSpec:
  ds = obj.get('dataset')
  if ds not in formats.DATASETS:
    raise FlanError(f'{source}: "dataset" must be one of {formats.DATASETS}, got {ds!r}')
  missing = [v for v in VARIANTS if v not in obj]
  if missing:
    raise FlanError(f'{source}: missing variant(s) {missing}')
  return FlanSpec(ds, {v: _parse_variant(ds, v, obj[v], source) for v in VARIANTS},
                  source)


def load_spec(ds: str, path: Optional[str] = None) -> FlanSpec:
  """Reads `tasks/data/flan/{ds}.json` (or `path`)."""
  formats.check_dataset(ds)
  path = str(path or templates_dir() / f'{ds}.json')
  try:
    with open(path, encoding='utf-8') as f:
      obj = json.load(f)
  except json.JSONDecodeError as e:
    raise FlanError(f'{path}:{e.lineno}: malformed JSON ({e.msg})') from None
  spec = parse_spec(obj, path)
  if spec.dataset != ds:
    raise FlanError(f'{path}: "dataset" is {spec.dataset!r}, expected {ds!r}')
  return spec


# -------------------------------------------------------------------- fields


def format_options(options: Sequence[str], header: str = OPTIONS_HEADER) -> str:
  """Flan's options block: 'OPTIONS:\\n- a\\n- b'."""
  return '\n'.join([header] + [f'- {o}' for o in options])


def _text(record: Mapping[str, Any], name: str) -> str:
  v = record.get(name, '')
  return v.decode('utf-8') if isinstance(v, bytes) else str(v or '')


def record_fields(ds: str, record: Mapping[str, Any]) -> dict[str, Any]:
  """Template fields of one prepared record (its `inputs` parsed back)."""
  formats.check_dataset(ds)
  inputs, rid = _text(record, 'inputs'), _text(record, 'id')
  fields: dict[str, Any] = {'inputs': inputs, 'answer': _text(record, 'label'),
                            'rationale': _text(record, 'rationale').strip()}
  if ds == 'cqa':
    head, sep, block = inputs.partition('\nAnswer Choices:\n')
    lines = block.split('\n') if sep else []
    matches = [_CHOICE_LINE.match(line) for line in lines]
    if not sep or not matches or not all(matches):
      raise FlanError(f'cqa record {rid!r}: inputs are not "question\\nAnswer '
                      f'Choices:\\n(a) ..." ({inputs[:80]!r})')
    choices = [m.group(2) for m in matches]
    answer = fields['answer']
    fields.update(question=head, choices=choices, options=format_options(choices),
                  options_lettered='\n'.join(lines),
                  answer_letter=(formats.CHOICE_LETTERS[choices.index(answer)]
                                 if answer in choices else ''))
  elif ds == 'svamp':
    body, _, question = inputs.rpartition('\n')
    fields.update(body=body.strip(), question=question.strip(), problem=inputs)
  else:
    m = re.fullmatch(r'Premise: (.*)\nHypothesis: (.*)', inputs, re.DOTALL)
    if not m:
      raise FlanError(f'{ds} record {rid!r}: inputs are not "Premise: ...\\n'
                      f'Hypothesis: ..." ({inputs[:80]!r})')
    fields.update(premise=m.group(1), hypothesis=m.group(2),
                  options=format_options(formats.NLI_LABELS))
  return fields


# ----------------------------------------------------------------- rendering


def render(variant: Variant, template_index: int, query: Mapping[str, Any],
           exemplars: Sequence[Mapping[str, Any]] = ()) -> tuple[str, str]:
  """(inputs, targets) of one example: shots + query input, query target."""
  t = variant.templates[template_index]
  if exemplars:
    inputs = templates.few_shot(exemplars, query, template=t, prefix=variant.prefix,
                                separator=variant.separator, joiner=variant.joiner)
  else:
    inputs = variant.prefix + templates.render(t.input_template, query)
  return inputs, templates.render(t.target_template, query)


def _rng(seed: int, variant: str, example_id: str) -> random.Random:
  return random.Random(f'{seed}:{variant}:{example_id}')


def build_examples(spec: FlanSpec, variant_name: str,
                   records: Sequence[Mapping[str, Any]],
                   pool: Sequence[Mapping[str, Any]] = (), *, seed: int = 0,
                   k: Optional[int] = None, template_index: Optional[int] = None,
                   keep_without_rationale: bool = False) -> list[dict[str, str]]:
  """Renders records into {'id', 'inputs', 'targets', 'template'} examples.

  Each example draws a template (unless `template_index`) and `k` exemplars
  from `pool` (other ids only; for CoT only ones with a rationale), seeded by
  `seed`, the variant and the example id. CoT records without a rationale are
  skipped unless `keep_without_rationale` (then the target is the answer
  sentence alone).
  """
  variant = spec.variant(variant_name)
  k = variant.k if k is None else k
  cot = variant_name == 'cot'
  pool_fields = [(_text(r, 'id'), record_fields(spec.dataset, r)) for r in pool]
  if cot:
    pool_fields = [p for p in pool_fields if p[1]['rationale']]
  if k and len(pool_fields) < k:
    raise FlanError(f'{spec.dataset} {variant_name}: {k} exemplars need a pool of '
                    f'at least {k} records, got {len(pool_fields)}')
  out = []
  for r in records:
    rid = _text(r, 'id')
    fields = record_fields(spec.dataset, r)
    if cot and not fields['rationale']:
      if not keep_without_rationale:
        continue
    rng = _rng(seed, variant_name, rid)
    ti = (rng.randrange(len(variant.templates)) if template_index is None
          else template_index)
    shots = []
    if k:
      picks = rng.sample(range(len(pool_fields)), min(k + 1, len(pool_fields)))
      shots = [pool_fields[i][1] for i in picks if pool_fields[i][0] != rid][:k]
      if len(shots) < k:
        raise FlanError(f'{spec.dataset} {variant_name} record {rid!r}: the pool '
                        f'has fewer than {k} other records')
    inputs, targets = render(variant, ti, fields, shots)
    if cot and not fields['rationale']:
      targets = targets.lstrip()
    out.append({'id': rid, 'inputs': inputs, 'targets': targets,
                'template': str(ti)})
  return out
