"""Crash safety: SIGKILL the generator midway, rerun, get the uninterrupted result."""
import json
import os
import signal
import subprocess
import sys
import time

from distill_sbs.data import schema
from distill_sbs.teacher import base
from distill_sbs.teacher import generation
from distill_sbs.teacher import openai_backend
from distill_sbs.teacher import store as store_lib
from distill_sbs.teacher.loopback import FaultPlan, LoopbackServer
from tests.teacher.teacher_helpers import KEY_ENV, SECRET, all_output_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAULTS = FaultPlan(period=10, rate_limit=(2,), server_error=(6,), retry_after='0.01')


def _cli(server, data_dir, out_dir):
  return [sys.executable, '-m', 'distill_sbs.generate_rationales', '--dataset=cqa',
          '--split=test', f'--data_dir={data_dir}', '--backend=openai',
          f'--base_url={server.base_url}', '--model=fake-teacher', f'--out_dir={out_dir}',
          '--concurrency=2', '--timeout=5', '--max_examples=40', '--num_samples=1',
          '--temperature=0', f'--api_key_env={KEY_ENV}', '--part_size=4',
          '--noprogress',
          '--gin_bindings=distill_sbs.teacher.RetryPolicy.initial_backoff_s = 0.01']


def _wait_until_quiet(server, quiet_s=0.5, limit_s=10.0):
  """Returns once the server's counters have not moved for `quiet_s`."""
  deadline = time.monotonic() + limit_s
  last, since = dict(server.served), time.monotonic()
  while time.monotonic() < deadline:
    time.sleep(0.05)
    now = dict(server.served)
    if now != last:
      last, since = now, time.monotonic()
    elif time.monotonic() - since >= quiet_s:
      return


def _records(out_dir):
  return list(schema.read_records(os.path.join(out_dir, 'test.tfrecord-*')))


def test_sigkill_midway_then_rerun_equals_uninterrupted(cqa_data_dir, cqa_teacher, tmp_path,
                                                        monkeypatch):
  monkeypatch.setenv(KEY_ENV, SECRET)
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'JAX_PLATFORMS': 'cpu'}
  ref_dir, out_dir = str(tmp_path / 'ref'), str(tmp_path / 'out')
  with LoopbackServer(cqa_teacher, faults=FAULTS, latency_s=0.06) as server:
    # Killed midway through.
    proc = subprocess.Popen(_cli(server, cqa_data_dir, out_dir), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    parts_dir = os.path.join(out_dir, '.parts-test')
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
      if os.path.isdir(parts_dir) and len([p for p in os.listdir(parts_dir)
                                           if p.endswith('.tfrecord')]) >= 2:
        break
      time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out_dir, 'manifest.json'))
    done = store_lib.PartStore(out_dir, 'test').done_ids()
    assert 8 <= len(done) < 40

    # Requests the killed process had in flight are still answered (and counted)
    # by the server after the kill: wait until its counters settle.
    _wait_until_quiet(server)
    # Rerun the same command: only the missing examples are requested.
    ok_before = server.served.get('ok', 0)
    rerun = subprocess.run(_cli(server, cqa_data_dir, out_dir), cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert rerun.returncode == 0, rerun.stdout.decode()[-3000:]
    assert server.served['ok'] - ok_before == 40 - len(done)

    # The uninterrupted reference (in process, same settings).
    config = generation.GenerationConfig(
        out_dir=ref_dir, dataset='cqa', split='test', data_dir=str(cqa_data_dir),
        max_examples=40, part_size=4, progress=False)
    backend = openai_backend.OpenAIBackend(
        server.base_url, 'fake-teacher', api_key_env=KEY_ENV, concurrency=2, timeout=5,
        retry=openai_backend.RetryPolicy(initial_backoff_s=0.01))
    ref_manifest = generation.run(config, backend, base.SamplingConfig())

  got, ref = _records(out_dir), _records(ref_dir)
  assert len(got) == 40 and len({r['id'] for r in got}) == 40
  assert got == ref
  manifest = json.loads(open(os.path.join(out_dir, 'manifest.json')).read())
  assert manifest['counts'] == ref_manifest['counts']
  assert manifest['complete'] and manifest['counts']['written'] == 40
  assert manifest['teacher_accuracy'] == ref_manifest['teacher_accuracy']
  assert manifest['prompt']['hash'] == ref_manifest['prompt']['hash']
  assert 'retry' in manifest['backend'] and manifest['backend']['retry']['initial_backoff_s'] == 0.01
  files = all_output_bytes(out_dir)
  assert any(p.endswith('config.gin') for p, _ in files)
  assert not any(SECRET.encode() in data for _, data in files)
  assert b'records written' in rerun.stdout


class _InterruptingTeacher:
  """Answers svamp prompts; raises KeyboardInterrupt (Ctrl-C) after `stop_after`."""
  name, model = 'fake', 'fake'

  def __init__(self, stop_after=None):
    self.stop_after = stop_after
    self.seen = []

  def record_fields(self):
    return {}

  def generate(self, prompts, sampling, stop=()):
    for p in prompts:
      if self.stop_after is not None and len(self.seen) == self.stop_after:
        raise KeyboardInterrupt
      self.seen.append(p.id)
      n = int(p.text.rsplit('has ', 1)[1].split()[0])
      yield base.GenerationResult(p.id, [base.Completion(
          text=f'It is {n}. The answer is ({n} + 0).', num_tokens=7)])


def test_ctrl_c_keeps_finished_examples_and_torn_parts_are_ignored(tmp_path):
  import pytest
  rows = tmp_path / 'in.jsonl'
  rows.write_text(''.join(json.dumps({'id': f'q{i}', 'input': f'Ann has {i} cats.\nHow many?',
                                      'label': f'({i})'}) + '\n' for i in range(10)))
  config = generation.GenerationConfig(out_dir=str(tmp_path / 'o'), dataset='svamp',
                                       input_jsonl=str(rows), part_size=100, progress=False)
  with pytest.raises(KeyboardInterrupt):
    generation.run(config, _InterruptingTeacher(stop_after=6), base.SamplingConfig())
  store = store_lib.PartStore(config.out_dir, 'train')
  assert store.done_ids() == {f'q{i}' for i in range(6)}   # flushed on Ctrl-C
  assert store.runs()[-1]['interrupted'] and store.runs()[-1]['generated'] == 6
  # Debris of a crash between writes: a temporary and an index without records.
  parts = os.path.join(config.out_dir, '.parts-train')
  open(os.path.join(parts, 'part-x-00000.tfrecord.tmp'), 'wb').write(b'junk')
  open(os.path.join(parts, 'part-y-00000.index.jsonl'), 'w').write('{"id": "q7"}\n')
  teacher = _InterruptingTeacher()
  manifest = generation.run(config, teacher, base.SamplingConfig())
  assert teacher.seen == [f'q{i}' for i in range(6, 10)]
  assert sorted(os.listdir(parts)) == sorted(p for p in os.listdir(parts)
                                             if p.endswith(('.tfrecord', '.index.jsonl')))
  assert not os.path.exists(os.path.join(parts, 'part-y-00000.index.jsonl'))
  recs = _records_split(config.out_dir, 'train')
  assert [r['id'] for r in recs] == [f'q{i}' for i in range(10)]
  assert manifest['counts']['written'] == 10 and manifest['teacher_accuracy'] == 1.0
  assert manifest['runs'] == 2
  # Another teacher / sampling into the same directory is refused, not mixed in.
  with pytest.raises(ValueError, match=r"different \['sampling'\]"):
    generation.run(config, _InterruptingTeacher(), base.SamplingConfig(max_tokens=9))


def _records_split(out_dir, split):
  return list(schema.read_records(os.path.join(out_dir, f'{split}.tfrecord-*')))
