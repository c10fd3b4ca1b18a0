"""OpenAI-compatible backend against a real loopback HTTP server with injected faults."""
import json
import os
import time

import numpy as np
import pytest

from distill_sbs.data import schema
from distill_sbs.teacher import base
from distill_sbs.teacher import generation
from distill_sbs.teacher import openai_backend
from distill_sbs.teacher.loopback import FaultPlan, LoopbackServer
from tests.teacher.teacher_helpers import KEY_ENV, SECRET, all_output_bytes, fate, query_of

FAST_RETRY = openai_backend.RetryPolicy(max_attempts=8, initial_backoff_s=0.01,
                                        max_backoff_s=0.05)


def _backend(server, **kw):
  kw.setdefault('concurrency', 4)
  kw.setdefault('timeout', 0.5)
  kw.setdefault('retry', FAST_RETRY)
  return openai_backend.OpenAIBackend(server.base_url, 'fake-teacher',
                                      api_key_env=KEY_ENV, **kw)


def _inputs(data_dir):
  return list(schema.read_records(os.path.join(data_dir, 'cqa', 'test.tfrecord-*')))


@pytest.mark.parametrize('chat', [False, True])
def test_faults_every_input_once_and_counts_add_up(cqa_data_dir, cqa_teacher, tmp_path,
                                                   monkeypatch, chat):
  monkeypatch.setenv(KEY_ENV, SECRET)
  faults = FaultPlan(period=10, rate_limit=(1,), server_error=(3,), stall=(5,),
                     malformed=(7,), retry_after='0.05', stall_s=1.0)
  inputs = _inputs(cqa_data_dir)
  config = generation.GenerationConfig(
      out_dir=str(tmp_path / 'out'), dataset='cqa', split='test',
      data_dir=str(cqa_data_dir), part_size=8, chat=chat, progress=False)
  with LoopbackServer(cqa_teacher, faults=faults) as server:
    backend = _backend(server)
    manifest = generation.run(config, backend, base.SamplingConfig(max_tokens=64))
  # Every fault kind was served and retried past.
  for kind in ('rate_limit', 'server_error', 'stall', 'malformed'):
    assert server.served.get(kind, 0) >= 1, server.served
  assert backend.stats['retries'] == sum(server.served[k] for k in
                                         ('rate_limit', 'server_error', 'stall', 'malformed'))
  assert server.served['ok'] == len(inputs)
  assert server.auth_headers == {f'Bearer {SECRET}'}
  assert set(server.endpoints) == {'/v1/chat/completions' if chat else '/v1/completions'}

  records = list(schema.read_records(str(tmp_path / 'out' / 'test.tfrecord-*')))
  assert [r['id'] for r in records] == [r['id'] for r in inputs]  # once each, in order
  fates = {r['id']: fate(r['inputs']) for r in inputs}
  garbage = sorted(i for i, f in fates.items() if f == 'garbage')
  assert 0 < len(garbage) < len(inputs)
  c = manifest['counts']
  assert c == {'inputs': 48, 'generated': 48, 'written': 48,
               'parsed': 48 - len(garbage), 'parse_failures': len(garbage),
               'failed': 0, 'with_gold': 48}
  assert sorted(manifest['parse_failure_ids']) == garbage
  right = sum(f == 'right' for f in fates.values())
  assert manifest['teacher_accuracy'] == pytest.approx(right / 48)
  assert manifest['teacher_accuracy_parsed'] == pytest.approx(right / (48 - len(garbage)))
  assert manifest['complete'] and manifest['model'] == 'fake-teacher'
  assert manifest['prompt']['style'] == ('chat' if chat else 'completion')
  assert len(manifest['prompt']['hash']) == 64
  assert manifest['completion_tokens'] > 0 and manifest['tokens_per_s'] > 0

  by_id = {r['id']: r for r in records}
  for src in inputs:
    rec, f = by_id[src['id']], fates[src['id']]
    assert rec['inputs'] == src['inputs'] and rec['label'] == src['label']
    assert rec['llm_output'].startswith(cqa_teacher(f'Q: {src["inputs"]}\nA:', {}))
    if f == 'garbage':
      assert rec['llm_label'] == '' and rec['rationale'] == ''
    else:
      assert rec['rationale'].startswith('The question asks about ')
      assert (rec['llm_label'] == rec['label']) == (f == 'right')
    assert rec['vote_share'] == 1.0
  assert not any(SECRET.encode() in data for _, data in all_output_bytes(tmp_path / 'out'))


def test_retry_after_is_honoured_and_4xx_is_not_retried(cqa_teacher, tmp_path, monkeypatch):
  monkeypatch.setenv(KEY_ENV, SECRET)
  rows = tmp_path / 'in.jsonl'
  q = 'Where do fish live?\nAnswer Choices:\n(a) sea\n(b) sky\n(c) desk\n(d) oven\n(e) moon'
  rows.write_text(json.dumps({'id': 'a', 'inputs': q, 'label': 'sea'}) + '\n')
  teacher = type(cqa_teacher)({q: 'sea'})
  faults = FaultPlan(period=1000, rate_limit=(0,), retry_after='0.6')
  config = generation.GenerationConfig(out_dir=str(tmp_path / 'o1'), dataset='cqa',
                                       input_jsonl=str(rows), progress=False)
  with LoopbackServer(teacher, faults=faults) as server:
    t0 = time.monotonic()
    manifest = generation.run(config, _backend(server), base.SamplingConfig())
    elapsed = time.monotonic() - t0
  assert server.served == {'rate_limit': 1, 'ok': 1}
  assert elapsed >= 0.6 and manifest['counts']['written'] == 1

  # A 400 is permanent: one request, recorded as a failure with its reason.
  def bad(prompt, body):
    raise ValueError('prompt too long')
  config = generation.GenerationConfig(out_dir=str(tmp_path / 'o2'), dataset='cqa',
                                       input_jsonl=str(rows), progress=False)
  with LoopbackServer(bad) as server:
    manifest = generation.run(config, _backend(server), base.SamplingConfig())
  assert server.served == {'bad_request': 1}
  assert manifest['counts']['failed'] == 1 and not manifest['complete']
  assert 'HTTP 400' in manifest['failures']['a']
  lines = (tmp_path / 'o2' / 'failures.jsonl').read_text().splitlines()
  assert json.loads(lines[0])['id'] == 'a' and 'prompt too long' in lines[0]
  # The next run retries the failed example and completes.
  with LoopbackServer(teacher) as server:
    manifest = generation.run(config, _backend(server), base.SamplingConfig())
  assert manifest['complete'] and manifest['counts']['written'] == 1
  assert manifest['counts']['failed'] == 0 and manifest['runs'] == 2


@pytest.mark.parametrize('via_n', [True, False])
def test_self_consistency_votes_and_keeps_an_agreeing_rationale(tmp_path, monkeypatch, via_n):
  monkeypatch.setenv(KEY_ENV, SECRET)
  rows = tmp_path / 'in.jsonl'
  rows.write_text(''.join(json.dumps({'id': f'q{i}', 'input': f'Tom has {i} apples.\nHow many?',
                                      'label': f'( {i}.0 + 0.0 )'}) + '\n' for i in range(3)))
  # Per query, 5 samples: 3 agree on i + 0 (written two ways), 1 wrong, 1 garbage.
  answers = ['({i} + 0)', '({i} + 5)', 'nothing', '(0 + {i})', '({i} - 0)']

  def teacher(prompt, body):
    i = int(query_of(prompt).split()[2])
    assert body['n'] == (5 if via_n else 1) and body['temperature'] == 0.7
    teacher.calls += 1
    ans = answers[(teacher.calls - 1) % 5].format(i=i)
    return f'Sample {teacher.calls}. The answer is {ans}.' if ans != 'nothing' else 'hmm'
  teacher.calls = 0
  config = generation.GenerationConfig(out_dir=str(tmp_path / 'o'), dataset='svamp',
                                       input_jsonl=str(rows), progress=False)
  with LoopbackServer(teacher) as server:
    manifest = generation.run(config, _backend(server, concurrency=1, samples_via_n=via_n),
                              base.SamplingConfig(num_samples=5, temperature=0.7))
  assert server.served['ok'] == (3 if via_n else 15)
  records = list(schema.read_records(str(tmp_path / 'o' / 'train.tfrecord-*')))
  assert len(records) == 3
  for r in records:
    i = int(r['id'][1:])
    assert r['vote_share'] == pytest.approx(0.6)
    assert r['llm_label'] == f'({i} + 0)'   # the first sample agreeing with the vote
    assert r['rationale'].startswith('Sample ')
  assert manifest['teacher_accuracy'] == 1.0
  assert manifest['mean_vote_share'] == pytest.approx(0.6)
  assert manifest['sampling']['num_samples'] == 5


def test_logprobs_are_captured(tmp_path, monkeypatch, cqa_teacher):
  monkeypatch.setenv(KEY_ENV, SECRET)
  q = next(iter(cqa_teacher.gold))
  rows = tmp_path / 'in.jsonl'
  rows.write_text(json.dumps({'id': 'x', 'inputs': q}) + '\n')
  for chat in (False, True):
    out = tmp_path / f'o{chat}'
    config = generation.GenerationConfig(out_dir=str(out), dataset='cqa', chat=chat,
                                         input_jsonl=str(rows), progress=False)
    with LoopbackServer(cqa_teacher) as server:
      generation.run(config, _backend(server),
                     base.SamplingConfig(top_logprobs=3))
    lp = json.loads((out / 'train.logprobs.jsonl').read_text())
    rec = next(schema.read_records(str(out / 'train.tfrecord-*')))
    assert lp['id'] == 'x' and ''.join(lp['tokens']) == rec['llm_output']
    assert lp['token_logprobs'] == [-0.1] * len(lp['tokens'])
    assert [len(t) for t in lp['top_logprobs']] == [3] * len(lp['tokens'])
    assert lp['top_logprobs'][0][0] == [lp['tokens'][0], -0.1]


def test_token_id_logprobs_become_record_topk():
  c = base.Completion(text='ab', tokens=['token_id:7', 'token_id:1'],
                      top_logprobs=[[('token_id:7', -0.1), ('token_id:9', -2.0)],
                                    [('token_id:1', -0.2), ('token_id:3', -1.5)]])
  fields = generation._http_topk(c)  # pylint: disable=protected-access
  ids, lps = schema.decode_topk(fields)
  np.testing.assert_array_equal(ids, [[7, 9], [1, 3]])
  np.testing.assert_allclose(lps, [[-0.1, -2.0], [-0.2, -1.5]], atol=1e-3)
  np.testing.assert_array_equal(fields['teacher_target_ids'], [7, 1])
  assert generation._http_topk(base.Completion(text='a', tokens=['a'],  # pylint: disable=protected-access
                                               top_logprobs=[[('a', -1.0)]])) is None


def test_backoff_and_retry_after_parsing():
  import email.utils
  import random
  policy = openai_backend.RetryPolicy(initial_backoff_s=0.5, multiplier=2.0,
                                      max_backoff_s=4.0, jitter=0.5, max_retry_after_s=10)
  rng = random.Random(0)
  for attempt, base_s in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
    delays = [policy.delay(attempt, None, rng) for _ in range(200)]
    assert base_s * 0.5 <= min(delays) and max(delays) <= base_s
    assert max(delays) - min(delays) > 0.3 * base_s   # jittered
  assert policy.delay(1, 3.0, rng) == 3.0              # Retry-After wins when longer
  assert policy.delay(1, 99.0, rng) == 10.0            # ... capped
  parse = openai_backend.retry_after_seconds
  assert parse({'retry-after': '7'}) == 7.0
  assert parse({'retry-after-ms': '250', 'retry-after': '9'}) == 0.25
  date = email.utils.formatdate(1_000_030.0, usegmt=True)
  assert parse({'retry-after': date}, now=1_000_000.0) == pytest.approx(30.0)
  assert parse({'retry-after': 'soon'}) is None and parse({}) is None
  assert openai_backend.classify(json.JSONDecodeError('x', 'y', 0))[0]
  assert not openai_backend.classify(KeyError('k'))[0]
  assert openai_backend.redact_url('http://u:pw@h:8000/v1?key=s') == 'http://h:8000/v1'
