"""Few-shot chain-of-thought prompts for the teacher, built from JSON prompt files.

A prompt file (`tasks/data/prompts/{ds}.json`, or a user's `--prompt_file` in
the same format) holds:

  {"dataset": "cqa",                    # names the input format and the parser
   "prefix": "...",                     # instruction text (chat: system message)
   "input_template": "Q: {inputs}\\nA:", # distill_sbs.data.templates syntax
   "target_template": " {completion}",
   "separator": "\\n\\n",                 # between few-shot turns
   "stop": ["\\n\\nQ:"],                  # stop sequences for the teacher
   "exemplars": [{"input": {raw row} | "formatted text",
                  "rationale": "...", "label": "..."}, ...]}

Template fields: `inputs` (the task's input text, `formats.format_input` of a
raw row), `rationale`, `label`, and `completion` (`formats.format_completion`:
the teacher-style answer that `parsers.parse_completion` reads back).

Styles: 'completion' builds one string; 'chat' builds messages (system =
prefix, then user/assistant turns per exemplar, then the query as user).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence, Union

from distill_sbs.data import formats
from distill_sbs.data import templates

STYLES = ('completion', 'chat')
Messages = tuple[tuple[str, str], ...]  # ((role, content), ...)


def prompts_dir() -> pathlib.Path:
  """`tasks/data/prompts` of this checkout / installed `distill_sbs.tasks`."""
  return templates.package_data_dir('prompts')


@dataclasses.dataclass(frozen=True)
class Exemplar:
  inputs: str        # formatted task input
  rationale: str
  label: str
  completion: str    # teacher-style answer text


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """A parsed prompt file."""
  dataset: str
  template: templates.Template
  exemplars: tuple[Exemplar, ...]
  prefix: str = ''
  separator: str = '\n\n'
  stop: tuple[str, ...] = ()
  source: str = ''

  def to_json(self) -> dict[str, Any]:
    return {'dataset': self.dataset, 'prefix': self.prefix,
            'input_template': self.template.input_template,
            'target_template': self.template.target_template,
            'separator': self.separator, 'stop': list(self.stop),
            'exemplars': [dataclasses.asdict(e) for e in self.exemplars]}

  def hash(self, style: str) -> str:
    """sha256 of the canonical spec + style (recorded in the manifest)."""
    blob = json.dumps({'style': style, **self.to_json()}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode('utf-8')).hexdigest()


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One request: `text` (completion style) or `messages` (chat style)."""
  id: str
  text: Optional[str] = None
  messages: Optional[Messages] = None

  def as_openai_messages(self) -> list[dict[str, str]]:
    assert self.messages is not None, f'prompt {self.id!r} is not chat style'
    return [{'role': r, 'content': c} for r, c in self.messages]

  def flat_text(self) -> str:
    """The prompt as one string (for local models / token accounting)."""
    if self.text is not None:
      return self.text
    return '\n\n'.join(c for _, c in self.messages or ())


def _exemplar(ds: str, ex: Mapping[str, Any], where: str) -> Exemplar:
  for key in ('input', 'rationale', 'label'):
    if key not in ex:
      raise ValueError(f'{where}: exemplar is missing field {key!r} '
                       f'(has {sorted(ex)})')
  raw = ex['input']
  row = raw if isinstance(raw, Mapping) else None
  try:
    inputs = formats.format_input(ds, raw) if row is not None else str(raw)
  except ValueError as e:
    raise ValueError(f'{where}: {e}') from None
  label = str(ex['label'])
  rationale = str(ex['rationale']).strip()
  completion = formats.format_completion(ds, rationale, label, row)
  return Exemplar(inputs=inputs, rationale=rationale, label=label,
                  completion=completion)


def parse_spec(obj: Mapping[str, Any], source: str = '<dict>',
               dataset: Optional[str] = None) -> PromptSpec:
  """Validates a prompt-file object; errors name `source` and the field."""
  ds = obj.get('dataset') or dataset
  if not ds:
    raise ValueError(f'{source}: prompt file needs a "dataset" field')
  if dataset and ds != dataset:
    raise ValueError(f'{source}: prompt file is for dataset {ds!r}, '
                     f'but --dataset={dataset!r}')
  formats.check_dataset(ds)
  for key in ('input_template', 'target_template', 'exemplars'):
    if key not in obj:
      raise ValueError(f'{source}: prompt file is missing field {key!r}')
  if not isinstance(obj['exemplars'], list):
    raise ValueError(f'{source}: field "exemplars" must be a list')
  try:
    template = templates.Template(obj['input_template'], obj['target_template'])
  except templates.TemplateError as e:
    raise ValueError(f'{source}: {e}') from None
  exemplars = tuple(_exemplar(ds, ex, f'{source}: exemplars[{i}]')
                    for i, ex in enumerate(obj['exemplars']))
  spec = PromptSpec(dataset=ds, template=template, exemplars=exemplars,
                    prefix=str(obj.get('prefix', '')),
                    separator=str(obj.get('separator', '\n\n')),
                    stop=tuple(obj.get('stop', ())), source=source)
  # Fail now, not on the first query, if the templates use unknown fields.
  allowed = {'inputs', 'rationale', 'label', 'completion'}
  bad = [f for f in templates.placeholders(template.input_template)
         + templates.placeholders(template.target_template) if f not in allowed]
  if bad:
    raise ValueError(f'{source}: unknown template field(s) {bad}; '
                     f'allowed: {sorted(allowed)}')
  return spec


def load_spec(dataset: Optional[str] = None,
              prompt_file: Optional[Union[str, os.PathLike]] = None) -> PromptSpec:
  """The user's `prompt_file` if given, else the project's file for `dataset`."""
  if prompt_file:
    path = pathlib.Path(os.path.expanduser(str(prompt_file)))
  elif dataset:
    path = prompts_dir() / f'{formats.check_dataset(dataset)}.json'
  else:
    raise ValueError('need --dataset or --prompt_file to choose the prompts')
  if not path.exists():
    raise FileNotFoundError(f'prompt file not found: {path}')
  try:
    obj = json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}') from None
  return parse_spec(obj, str(path), dataset)


def _fields(ex: Exemplar) -> dict[str, str]:
  return dataclasses.asdict(ex)


def build_prompt(spec: PromptSpec, example_id: str, inputs: str,
                 style: str = 'completion') -> Prompt:
  """The few-shot prompt for one formatted task input."""
  query = {'inputs': inputs}
  if style == 'completion':
    text = templates.few_shot([_fields(e) for e in spec.exemplars], query,
                              template=spec.template, prefix=spec.prefix,
                              separator=spec.separator)
    return Prompt(id=example_id, text=text)
  if style == 'chat':
    msgs: list[tuple[str, str]] = []
    if spec.prefix.strip():
      msgs.append(('system', spec.prefix.strip()))
    for e in spec.exemplars:
      user, assistant = templates.render_pair(spec.template, _fields(e))
      msgs += [('user', user), ('assistant', assistant.strip())]
    msgs.append(('user', templates.render(spec.template.input_template, query)))
    return Prompt(id=example_id, messages=tuple(msgs))
  raise ValueError(f'unknown prompt style {style!r}; expected one of {STYLES}')


def build_prompts(spec: PromptSpec, examples: Sequence[tuple[str, str]],
                  style: str = 'completion') -> list[Prompt]:
  """`build_prompt` for (id, inputs) pairs."""
  return [build_prompt(spec, i, x, style) for i, x in examples]
