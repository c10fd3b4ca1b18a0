"""A tiny prompt-template engine shared by Flan instruction templates and teacher prompts.

A template is a pair `(input_template, target_template)` of strings with
`{field}` placeholders (Python `str.format` syntax; `{{` and `}}` are literal
braces; attribute/index access such as `{a.b}` / `{a[0]}` is not allowed).

API:
  `Template(input_template, target_template)`  frozen pair; a plain 2-tuple
      is accepted wherever a `Template` is expected.
  `placeholders(text) -> tuple[str, ...]`  field names in order of appearance.
  `render(template, example) -> str`  fills one template string from the
      mapping `example`; raises `TemplateError` naming every placeholder the
      example does not fill (and the template text).
  `render_pair(template, example) -> (inputs, targets)`  renders both halves.
  `few_shot(exemplars, query, *, prefix='', separator='\\n\\n', template,
            joiner='') -> str`
      `prefix` + the exemplars rendered as `input + joiner + target`, joined by
      `separator`, + `separator` + the query's rendered input (its target is
      left for the model). With no exemplars it is `prefix + query input`.

Example:
  >>> t = Template('Q: {question}\\nA:', ' {answer}')
  >>> few_shot([{'question': '1+1?', 'answer': '2'}], {'question': '2+2?'},
  ...          template=t)
  'Q: 1+1?\\nA: 2\\n\\nQ: 2+2?\\nA:'
"""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import string
from typing import Any, Mapping, Sequence, Union

_FORMATTER = string.Formatter()


class TemplateError(ValueError):
  """A template is malformed or an example does not fill it."""


@dataclasses.dataclass(frozen=True)
class Template:
  """An (input, target) pair of `{field}` templates."""
  input_template: str
  target_template: str = ''

  def __post_init__(self):
    for name in ('input_template', 'target_template'):
      value = getattr(self, name)
      if not isinstance(value, str):
        raise TemplateError(f'Template.{name} must be a string, got '
                            f'{type(value).__name__}')
      placeholders(value)  # Validates the syntax early.


TemplateLike = Union[Template, Sequence[str]]


def as_template(template: TemplateLike) -> Template:
  """Accepts a `Template` or an `(input_template, target_template)` pair."""
  if isinstance(template, Template):
    return template
  if isinstance(template, str) or len(template) != 2:
    raise TemplateError('a template is a Template or an (input_template, '
                        f'target_template) pair, got {template!r}')
  return Template(str(template[0]), str(template[1]))


def placeholders(text: str) -> tuple[str, ...]:
  """Names of the `{field}` placeholders of `text`, in order, without repeats."""
  try:
    parsed = list(_FORMATTER.parse(text))
  except ValueError as e:
    raise TemplateError(f'malformed template {text!r}: {e}') from None
  names: list[str] = []
  for _, field, _, _ in parsed:
    if field is None:
      continue
    if field == '' or field.isdigit():
      raise TemplateError(f'template {text!r}: positional placeholder '
                          f'{{{field}}} is not allowed; name the field')
    if any(c in field for c in '.[]'):
      raise TemplateError(f'template {text!r}: placeholder {{{field}}} may not '
                          'use attribute or index access')
    if field not in names:
      names.append(field)
  return tuple(names)


def render(template: str, example: Mapping[str, Any]) -> str:
  """Fills `template` from `example`; every placeholder must be filled."""
  if not isinstance(template, str):
    raise TemplateError(f'render() takes one template string, got '
                        f'{type(template).__name__}; use render_pair for pairs')
  names = placeholders(template)
  missing = [n for n in names if n not in example or example[n] is None]
  if missing:
    raise TemplateError(
        f'unfilled placeholder(s) {", ".join("{" + n + "}" for n in missing)} '
        f'in template {template!r}; the example has fields '
        f'{sorted(example)}')
  try:
    return template.format_map({n: example[n] for n in names})
  except (ValueError, TypeError) as e:
    raise TemplateError(f'template {template!r}: {e}') from None


def render_pair(template: TemplateLike, example: Mapping[str, Any]) -> tuple[str, str]:
  """Renders `(inputs, targets)` of a template pair for one example."""
  t = as_template(template)
  return render(t.input_template, example), render(t.target_template, example)


def few_shot(exemplars: Sequence[Mapping[str, Any]], query: Mapping[str, Any], *,
             template: TemplateLike, prefix: str = '', separator: str = '\n\n',
             joiner: str = '') -> str:
  """A few-shot prompt: prefix, solved exemplars, then the unsolved query."""
  t = as_template(template)
  shots = []
  for i, ex in enumerate(exemplars):
    try:
      shots.append(render(t.input_template, ex) + joiner +
                   render(t.target_template, ex))
    except TemplateError as e:
      raise TemplateError(f'exemplar {i}: {e}') from None
  try:
    query_text = render(t.input_template, query)
  except TemplateError as e:
    raise TemplateError(f'query: {e}') from None
  return prefix + ''.join(s + separator for s in shots) + query_text


def package_data_dir(*parts: str) -> pathlib.Path:
  """`tasks/data/{parts}`: the `distill_sbs.tasks` package data (Flan templates,
  teacher prompts), found without importing it (importing registers tasks)."""
  spec = importlib.util.find_spec('distill_sbs.tasks')
  if spec is not None and spec.submodule_search_locations:
    base = pathlib.Path(list(spec.submodule_search_locations)[0])
  else:
    base = pathlib.Path(__file__).resolve().parents[2] / 'tasks'
  return base.joinpath('data', *parts)
