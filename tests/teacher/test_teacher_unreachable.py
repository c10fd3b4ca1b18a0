"""A teacher URL that refuses connections fails early, naming the URL, instead
of retrying every example."""
import socket
import time

import pytest

from distill_sbs.teacher import openai_backend
from distill_sbs.teacher.base import SamplingConfig
from distill_sbs.teacher.prompts import Prompt


def _closed_port() -> int:
  s = socket.socket()
  s.bind(('127.0.0.1', 0))
  port = s.getsockname()[1]
  s.close()
  return port


@pytest.mark.parametrize('concurrency', [1, 4])
def test_refused_connections_give_up_naming_the_url(concurrency):
  url = f'http://127.0.0.1:{_closed_port()}/v1'
  backend = openai_backend.OpenAIBackend(
      base_url=url, model='m', concurrency=concurrency, timeout=5,
      retry=openai_backend.RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02))
  prompts = [Prompt(f'p{i}', text='Q: hi') for i in range(1000)]
  t0 = time.time()
  with pytest.raises(openai_backend.TeacherUnreachable,
                     match=rf'teacher server {url} is unreachable: the first 8 attempts'):
    list(backend.generate(prompts, SamplingConfig(max_tokens=4)))
  assert time.time() - t0 < 30
  assert backend.stats['requests'] <= 8 + concurrency
  backend.close()
