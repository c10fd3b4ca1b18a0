"""Prompt builder (golden files), the shared template engine, self-consistency voting."""
import json
import os
import pathlib

import pytest

from distill_sbs.data import formats
from distill_sbs.data import parsers
from distill_sbs.data import templates
from distill_sbs.teacher import prompts
from distill_sbs.teacher import self_consistency

GOLDEN = pathlib.Path(__file__).parent / 'golden'
UPDATE = os.environ.get('UPDATE_GOLDEN') == '1'
RAW_FILES = {'cqa': 'cqa/cqa_test.json', 'svamp': 'svamp/svamp_test.json',
             'esnli': 'esnli/esnli_test.json', 'anli1': 'anli1/anli1_test.json'}


def _first_row(raw_dir, ds):
  with open(raw_dir / RAW_FILES[ds], encoding='utf-8') as f:
    return json.loads(next(f))


def _check_golden(name: str, text: str):
  path = GOLDEN / name
  if UPDATE:
    path.write_text(text, encoding='utf-8')
  assert path.exists(), f'{path} missing; run with UPDATE_GOLDEN=1 to create it'
  assert text == path.read_text(encoding='utf-8'), f'{name} differs from the golden file'


@pytest.mark.parametrize('ds', formats.DATASETS)
def test_golden_prompts(raw_dir, ds):
  spec = prompts.load_spec(ds)
  inputs = formats.format_input(ds, _first_row(raw_dir, ds))
  completion = prompts.build_prompt(spec, 'q0', inputs, 'completion')
  _check_golden(f'{ds}.completion.txt', completion.text)
  chat = prompts.build_prompt(spec, 'q0', inputs, 'chat')
  _check_golden(f'{ds}.chat.json', json.dumps(chat.as_openai_messages(), indent=1,
                                              ensure_ascii=False) + '\n')
  assert completion.text.endswith(inputs + spec.template.input_template.split('{inputs}')[1])
  assert chat.messages[-1] == ('user', completion.text[-len(chat.messages[-1][1]):])
  assert len(chat.messages) == 2 + 2 * len(spec.exemplars)
  assert len(spec.hash('chat')) == 64 and spec.hash('chat') != spec.hash('completion')


@pytest.mark.parametrize('ds', formats.DATASETS)
def test_exemplars_parse_back_with_the_data_parser(ds):
  spec = prompts.load_spec(ds)
  assert len(spec.exemplars) >= 3
  for ex in spec.exemplars:
    p = parsers.parse_completion(ds, ex.completion)
    assert (p.ok, p.rationale, p.label) == (True, ex.rationale, ex.label)
  labels = {ex.label for ex in spec.exemplars}
  if formats.LABELS[ds]:
    assert labels == set(formats.LABELS[ds])  # every class shown


def test_user_prompt_file_overrides_and_errors_name_the_field(tmp_path):
  spec_obj = {'dataset': 'anli1', 'input_template': '{inputs}\nA:',
              'target_template': ' {completion}', 'separator': '\n###\n',
              'exemplars': [{'input': 'Premise: p\nHypothesis: h', 'rationale': 'Because.',
                             'label': 'neutral'}]}
  path = tmp_path / 'mine.json'
  path.write_text(json.dumps(spec_obj))
  spec = prompts.load_spec('anli1', str(path))
  p = prompts.build_prompt(spec, 'x', 'Premise: a\nHypothesis: b')
  assert p.text == ('Premise: p\nHypothesis: h\nA: Because. So the answer is neutral.'
                    '\n###\nPremise: a\nHypothesis: b\nA:')
  with pytest.raises(ValueError, match="is for dataset 'anli1'"):
    prompts.load_spec('cqa', str(path))
  bad = dict(spec_obj, target_template=' {answer_text}')
  path.write_text(json.dumps(bad))
  with pytest.raises(ValueError, match=r"mine.json: unknown template field\(s\) \['answer_text'\]"):
    prompts.load_spec('anli1', str(path))
  path.write_text(json.dumps(dict(spec_obj, exemplars=[{'input': 'x', 'label': 'neutral'}])))
  with pytest.raises(ValueError, match=r"exemplars\[0\]: exemplar is missing field 'rationale'"):
    prompts.load_spec('anli1', str(path))
  path.write_text('{"dataset": "anli1",\n "oops"}')
  with pytest.raises(ValueError, match=r'mine.json:2:\d+: invalid JSON'):
    prompts.load_spec('anli1', str(path))


def test_templates_render_and_few_shot():
  t = templates.Template('Q: {question}\nA:', ' {answer}')
  assert templates.placeholders('{a} {b} {a} {{c}}') == ('a', 'b')
  assert templates.render('{{x}} {a}', {'a': 1}) == '{x} 1'
  assert templates.render_pair(('in {x}', 'out {y}'), {'x': 1, 'y': 2}) == ('in 1', 'out 2')
  prompt = templates.few_shot([{'question': '1+1?', 'answer': '2'},
                               {'question': '2+3?', 'answer': '5'}],
                              {'question': '2+2?'}, template=t, prefix='Math.\n',
                              separator='\n\n')
  assert prompt == 'Math.\nQ: 1+1?\nA: 2\n\nQ: 2+3?\nA: 5\n\nQ: 2+2?\nA:'
  assert templates.few_shot([], {'question': 'x'}, template=t) == 'Q: x\nA:'
  assert templates.few_shot([{'question': 'a', 'answer': 'b'}], {'question': 'c'},
                            template=('{question}', '{answer}'), separator=' | ',
                            joiner=' => ') == 'a => b | c'
  with pytest.raises(templates.TemplateError, match=r'unfilled placeholder\(s\) \{answer\}'):
    templates.render(t.target_template, {'question': 'q'})
  with pytest.raises(templates.TemplateError, match=r'exemplar 1: unfilled .*\{answer\}'):
    templates.few_shot([{'question': 'a', 'answer': 'b'}, {'question': 'c'}],
                       {'question': 'q'}, template=t)
  with pytest.raises(templates.TemplateError, match='positional'):
    templates.Template('{} x')
  with pytest.raises(templates.TemplateError, match='attribute or index'):
    templates.placeholders('{a.b}')
  with pytest.raises(templates.TemplateError, match='malformed'):
    templates.placeholders('{a')


def test_vote():
  texts = ['r1 The answer is (2 + 2).', 'junk', 'r3 The answer is (1 + 1).',
           'r4 The answer is (4 * 1).', 'r5 The answer is (1 + 1).']
  v = self_consistency.vote('svamp', texts)
  assert v.index == 0 and v.parsed.label == '(2 + 2)'  # tie 2-2: seen first wins
  assert v.vote_share == pytest.approx(0.4)
  v = self_consistency.vote('anli1', ['a So the answer is neutral.',
                                      'b So the answer is contradiction.',
                                      'c So the answer is contradiction.'])
  assert (v.index, v.parsed.rationale, v.vote_share) == (1, 'b', pytest.approx(2 / 3))
  v = self_consistency.vote('esnli', ['no answer here', 'nor here'])
  assert (v.index, v.parsed.ok, v.vote_share) == (0, False, 0.0)
  assert self_consistency.labels_agree('svamp', '( 10.0 * 45.0 )', '(45 * 10)')
  assert not self_consistency.labels_agree('svamp', '( 10.0 * 45.0 )', '(45 + 10)')
  assert self_consistency.labels_agree('cqa', 'Wooded area', 'wooded area.')


@pytest.mark.parametrize('name', ['vllm', 'chat', 'self_consistency', 'flan_t5_local'])
def test_gin_files_bind_real_parameters(name):
  import gin
  from distill_sbs.teacher import base
  from distill_sbs.teacher import generation
  from distill_sbs.teacher import local_t5
  from distill_sbs.teacher import openai_backend
  repo = pathlib.Path(__file__).resolve().parents[2]
  # Other tests in this process may hold gin bindings: restore them afterwards.
  saved = {k: dict(v) for k, v in gin.config._CONFIG.items()}  # pylint: disable=protected-access
  saved_imports = set(gin.config._IMPORTS)  # pylint: disable=protected-access
  gin.clear_config()
  try:
    gin.parse_config_file(str(repo / 'gin' / 'teacher' / f'{name}.gin'))
    sampling = base.SamplingConfig()
    config = generation.GenerationConfig(out_dir='/tmp/x', dataset='cqa')
    if name == 'vllm':
      b = openai_backend.OpenAIBackend('http://127.0.0.1:1/v1', 'm')
      assert (b.concurrency, b.retry.max_attempts, config.part_size) == (32, 8, 256)
    if name == 'chat':
      assert config.chat
    if name == 'self_consistency':
      assert (sampling.num_samples, sampling.temperature) == (8, 0.7)
    if name == 'flan_t5_local':
      assert gin.query_parameter('distill_sbs.teacher.LocalT5Backend.k') == 5
      assert sampling.max_tokens == 128
      assert local_t5.LocalT5Backend.name == 'local'
  finally:
    gin.clear_config()
    gin.config._CONFIG.update(saved)  # pylint: disable=protected-access
    gin.config._IMPORTS.update(saved_imports)  # pylint: disable=protected-access


def test_jsonl_inputs_and_errors_name_file_and_line(tmp_path):
  from distill_sbs.teacher import inputs
  path = tmp_path / 'in.jsonl'
  path.write_text('{"premise": "p", "hypothesis": "h", "label": 1}\n\n'
                  '{"id": "x", "inputs": "Premise: a\\nHypothesis: b"}\n')
  exs = inputs.load_examples('esnli', 'train', input_jsonl=str(path))
  assert exs == [inputs.Example('train-000000', 'Premise: p\nHypothesis: h', 'neutral'),
                 inputs.Example('x', 'Premise: a\nHypothesis: b', '')]
  assert len(inputs.load_examples('esnli', 'train', input_jsonl=str(path),
                                  max_examples=1)) == 1
  path.write_text('{"inputs": "a"}\n{"premise": "p"}\n')
  with pytest.raises(ValueError, match=r"in.jsonl:2: .*missing field 'hypothesis'"):
    inputs.load_examples('esnli', 'train', input_jsonl=str(path))
  path.write_text('{"inputs": "a", "id": "d"}\n{"inputs": "b", "id": "d"}\n')
  with pytest.raises(ValueError, match="duplicate example id 'd'"):
    inputs.load_examples('esnli', 'train', input_jsonl=str(path))
  path.write_text('[1]\n')
  with pytest.raises(ValueError, match='in.jsonl:1: each line must be a JSON object'):
    inputs.load_examples('esnli', 'train', input_jsonl=str(path))
