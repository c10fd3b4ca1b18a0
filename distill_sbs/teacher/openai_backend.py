"""OpenAI-compatible HTTP teacher (vLLM, TGI, SGLang, Ollama, hosted APIs).

Uses `openai.AsyncOpenAI` with the client's own retries disabled: this module
retries 429 / 5xx / 408 / timeouts / connection errors / malformed bodies with
exponential backoff and jitter, honouring `Retry-After` (or `retry-after-ms`),
and keeps at most `concurrency` requests in flight. The API key is read from the
environment variable named by `api_key_env` and kept only in the client.
"""
from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import logging
import os
import queue
import random
import threading
import time
import urllib.parse
from typing import Any, Iterable, Iterator, Mapping, Optional

import gin
import openai
import pydantic

from distill_sbs.teacher.base import Completion, GenerationResult, SamplingConfig
from distill_sbs.teacher.prompts import Prompt

NO_KEY = 'EMPTY'  # What local servers (vLLM, Ollama) accept when no key is set.


@gin.configurable(module='distill_sbs.teacher')
@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """Attempt `i` (1-based) that fails waits `min(max, initial * mult**(i-1))`
  scaled by a random factor in `[1 - jitter, 1]`, and at least `Retry-After`."""
  max_attempts: int = 6  # including the first
  initial_backoff_s: float = 0.5
  multiplier: float = 2.0
  max_backoff_s: float = 30.0
  jitter: float = 0.5  # the random share of each wait
  max_retry_after_s: float = 120.0  # a longer `Retry-After` is capped to this
  # Give up (`TeacherUnreachable`) when the first this many attempts all fail
  # to connect and none has succeeded yet (0: retry every example as usual).
  give_up_unreachable: int = 8

  def __post_init__(self):
    if self.max_attempts < 1:
      raise ValueError(f'RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}')
    if not 0 <= self.jitter <= 1:
      raise ValueError(f'RetryPolicy.jitter must be in [0, 1], got {self.jitter}')

  def delay(self, attempt: int, retry_after: Optional[float],
            rng: random.Random) -> float:
    base = min(self.max_backoff_s,
               self.initial_backoff_s * self.multiplier ** (attempt - 1))
    d = base * (1.0 - self.jitter * rng.random())
    if retry_after is not None:
      d = max(d, min(retry_after, self.max_retry_after_s))
    return d


def retry_after_seconds(headers: Optional[Mapping[str, str]],
                        now: Optional[float] = None) -> Optional[float]:
  """Seconds from `retry-after-ms`, or `Retry-After` (seconds or HTTP date)."""
  if not headers:
    return None
  ms = headers.get('retry-after-ms')
  if ms is not None:
    try:
      return max(float(ms) / 1000.0, 0.0)
    except ValueError:
      pass
  value = headers.get('retry-after')
  if value is None:
    return None
  try:
    return max(float(value), 0.0)
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value).timestamp()
  except (TypeError, ValueError):
    return None
  return max(when - (time.time() if now is None else now), 0.0)


def redact_url(url: str) -> str:
  """The URL without user:password@ and query string (they may hold secrets)."""
  parts = urllib.parse.urlsplit(url)
  host = parts.hostname or ''
  if parts.port:
    host += f':{parts.port}'
  return urllib.parse.urlunsplit((parts.scheme, host, parts.path, '', ''))


class TeacherUnreachable(ConnectionError):
  """The server never answered: the first attempts all failed to connect."""
  user_error = True


class MalformedResponse(Exception):
  """The server answered 200 with a body that is not a usable completion."""


def classify(exc: BaseException) -> tuple[bool, str, Optional[float]]:
  """(retryable, reason, retry_after seconds) for one failed attempt."""
  headers = None
  response = getattr(exc, 'response', None)
  if response is not None:
    headers = getattr(response, 'headers', None)
  if isinstance(exc, openai.APITimeoutError):
    return True, 'timeout', None
  if isinstance(exc, openai.APIConnectionError):
    return True, f'connection error: {exc}', None
  if isinstance(exc, openai.APIResponseValidationError):
    return True, f'malformed response: {exc}', None
  if isinstance(exc, openai.APIStatusError):
    status = exc.status_code
    retryable = status in (408, 409, 429) or status >= 500
    return retryable, f'HTTP {status}: {exc.message}', retry_after_seconds(headers)
  if isinstance(exc, (json.JSONDecodeError, pydantic.ValidationError,
                      MalformedResponse)):
    return True, f'malformed response: {type(exc).__name__}: {exc}', None
  return False, f'{type(exc).__name__}: {exc}', None


def _completion_from_choice(choice: Any, chat: bool) -> Completion:
  if chat:
    message = getattr(choice, 'message', None)
    text = getattr(message, 'content', None)
  else:
    text = getattr(choice, 'text', None)
  if not isinstance(text, str):
    raise MalformedResponse('choice has no text')
  c = Completion(text=text, finish_reason=str(getattr(choice, 'finish_reason', '') or ''))
  lp = getattr(choice, 'logprobs', None)
  if lp is not None:
    if chat and getattr(lp, 'content', None):
      c.tokens = [t.token for t in lp.content]
      c.token_logprobs = [float(t.logprob) for t in lp.content]
      c.top_logprobs = [[(a.token, float(a.logprob)) for a in (t.top_logprobs or [])]
                        for t in lp.content]
      # Token bytes (chat shape): what a cross-tokenizer carry reads first.
      c.token_bytes = [getattr(t, 'bytes', None) for t in lp.content]
      c.top_bytes = [[getattr(a, 'bytes', None) for a in (t.top_logprobs or [])]
                     for t in lp.content]
    elif not chat and getattr(lp, 'tokens', None):
      c.tokens = list(lp.tokens)
      c.token_logprobs = [float(x) if x is not None else float('nan')
                          for x in (lp.token_logprobs or [])]
      c.top_logprobs = [sorted(((k, float(v)) for k, v in (d or {}).items()),
                               key=lambda kv: -kv[1])
                        for d in (lp.top_logprobs or [])]
    if c.tokens is not None:
      c.num_tokens = len(c.tokens)
  return c


@gin.configurable(module='distill_sbs.teacher')
class OpenAIBackend:
  """`TeacherBackend` over an OpenAI-compatible server; chat-style prompts
  (`Prompt.messages`) go to chat completions, text prompts to completions.

  `teacher_vocab_hash` (`data.vocab.vocab_hash` of the served model's
  vocabulary; `generate_rationales --teacher_vocabulary=DIR`) is stamped on
  every record, so token-id top-k records (`logprob_token_ids`, vLLM) of a
  teacher that shares the student's tokenizer pass the FIRST tasks' vocabulary
  check; without it they carry no hash and are refused there.
  """
  name = 'openai'

  def __init__(self, base_url: Optional[str] = None, model: Optional[str] = None, *,
               api_key_env: str = 'OPENAI_API_KEY', concurrency: int = 8,
               timeout: float = 30.0,
               retry: Optional[RetryPolicy] = None, samples_via_n: bool = True,
               logprob_token_ids: bool = False,
               extra_body: Optional[Mapping[str, Any]] = None, seed: int = 0,
               teacher_vocab_hash: str = ''):
    if not base_url:
      raise ValueError('OpenAIBackend.base_url (--base_url) is required, e.g. '
                       'http://127.0.0.1:8000/v1')
    if not model:
      raise ValueError('OpenAIBackend.model (--model) is required: the served model name')
    if concurrency < 1:
      raise ValueError(f'OpenAIBackend.concurrency must be >= 1, got {concurrency}')
    if timeout <= 0:
      raise ValueError(f'OpenAIBackend.timeout must be > 0, got {timeout}')
    self.base_url = base_url
    self.model = model
    self.api_key_env = api_key_env
    self.concurrency = int(concurrency)
    self.timeout = float(timeout)
    self.retry = retry or RetryPolicy()  # gin-configured when bound
    self.samples_via_n = samples_via_n
    self.logprob_token_ids = logprob_token_ids
    self.teacher_vocab_hash = teacher_vocab_hash or ''
    self.extra_body = dict(extra_body or {})
    if logprob_token_ids:  # vLLM: top-logprob tokens as 'token_id:N'.
      self.extra_body['return_tokens_as_token_ids'] = True
    self._rng = random.Random(seed)
    self._warned_no_key = False
    self.stats = {'requests': 0, 'retries': 0, 'failed_attempts': {}}
    self._reached = False  # any request answered
    self._unreachable = 0  # connection failures before the first answer

  def _api_key(self) -> str:
    if not os.environ.get(self.api_key_env) and not self._warned_no_key:
      self._warned_no_key = True
      logging.info('$%s is not set; sending the placeholder key %r', self.api_key_env, NO_KEY)
    return os.environ.get(self.api_key_env, '') or NO_KEY

  def record_fields(self) -> dict:
    return {'teacher_vocab_hash': self.teacher_vocab_hash} if self.teacher_vocab_hash else {}

  def describe(self) -> dict:
    """Manifest entry (never the key, only the variable's name)."""
    return {'backend': self.name, 'model': self.model, 'base_url': redact_url(self.base_url),
            'concurrency': self.concurrency,
            'timeout_s': self.timeout, 'api_key_env': self.api_key_env,
            'retry': dataclasses.asdict(self.retry)}

  def close(self) -> None:
    pass

  # -- one request ---------------------------------------------------------
  def _kwargs(self, prompt: Prompt, sampling: SamplingConfig, n: int,
              stop: tuple[str, ...]) -> dict:
    kw: dict[str, Any] = {'model': self.model, 'max_tokens': sampling.max_tokens,
                          'temperature': sampling.temperature, 'n': n}
    if sampling.top_p != 1.0:
      kw['top_p'] = sampling.top_p
    if stop:
      kw['stop'] = list(stop)[:4]
    if sampling.seed is not None:
      kw['seed'] = sampling.seed
    if prompt.messages is not None:  # Chat-style prompt: chat completions.
      kw['messages'] = prompt.as_openai_messages()
      if sampling.top_logprobs:
        kw['logprobs'] = True
        kw['top_logprobs'] = sampling.top_logprobs
    else:
      kw['prompt'] = prompt.flat_text()
      if sampling.top_logprobs:
        kw['logprobs'] = sampling.top_logprobs
    if self.extra_body:
      kw['extra_body'] = self.extra_body
    return kw

  async def _request(self, client: openai.AsyncOpenAI, kw: dict
                     ) -> tuple[list[Completion], int]:
    chat = 'messages' in kw
    if chat:
      resp = await client.chat.completions.create(**kw)
    else:
      resp = await client.completions.create(**kw)
    choices = getattr(resp, 'choices', None)
    if not choices:
      raise MalformedResponse('response has no choices')
    comps = [_completion_from_choice(c, chat)
             for c in sorted(choices, key=lambda c: c.index or 0)]
    usage = getattr(resp, 'usage', None)
    if usage is not None and getattr(usage, 'completion_tokens', None):
      missing = [c for c in comps if not c.num_tokens]
      for c in missing:
        c.num_tokens = int(usage.completion_tokens) // len(comps)
    prompt_tokens = int(getattr(usage, 'prompt_tokens', 0) or 0) if usage else 0
    return comps, prompt_tokens

  async def _with_retries(self, client, sem: asyncio.Semaphore, kw: dict
                          ) -> tuple[Optional[tuple[list[Completion], int]], str, int]:
    reason = ''
    for attempt in range(1, self.retry.max_attempts + 1):
      try:
        async with sem:
          self.stats['requests'] += 1
          result = await self._request(client, kw), '', attempt
          self._reached = True
          return result
      except asyncio.CancelledError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        retryable, reason, retry_after = classify(e)
        reason = reason.replace(self._api_key(), '***') if self._api_key() != NO_KEY else reason
        kind = reason.split(':')[0]
        self.stats['failed_attempts'][kind] = self.stats['failed_attempts'].get(kind, 0) + 1
        self._check_reachable(kind, reason)
        if not retryable or attempt == self.retry.max_attempts:
          return None, f'{reason} (attempt {attempt}/{self.retry.max_attempts})', attempt
        self.stats['retries'] += 1
        await asyncio.sleep(self.retry.delay(attempt, retry_after, self._rng))
    return None, reason, self.retry.max_attempts

  def _check_reachable(self, kind: str, reason: str) -> None:
    """Raises `TeacherUnreachable` once the first `give_up_unreachable`
    attempts have all failed to connect (instead of retrying every example)."""
    limit = self.retry.give_up_unreachable
    if self._reached or kind != 'connection error' or not limit:
      return
    self._unreachable += 1
    if self._unreachable >= limit:
      raise TeacherUnreachable(
          f'teacher server {redact_url(self.base_url)} is unreachable: the first {limit} '
          f'attempts all failed ({reason}); check --base_url and that the server is running '
          f'(RetryPolicy.give_up_unreachable={limit})')

  async def _one(self, client, sem, prompt: Prompt, sampling: SamplingConfig,
                 stop: tuple[str, ...]) -> GenerationResult:
    n = sampling.num_samples
    if self.samples_via_n or n == 1:
      calls = [self._kwargs(prompt, sampling, n, stop)]
    else:
      calls = [self._kwargs(prompt, sampling, 1, stop) for _ in range(n)]
    outs = await asyncio.gather(*(self._with_retries(client, sem, kw) for kw in calls))
    attempts = max(a for _, _, a in outs)
    errors = [r for o, r, _ in outs if o is None]
    if errors:
      return GenerationResult(prompt.id, error=errors[0], attempts=attempts)
    comps = [c for o, _, _ in outs for c in o[0]]
    if len(comps) != n:
      return GenerationResult(prompt.id, error=f'malformed response: {len(comps)} '
                              f'choices for n={n}', attempts=attempts)
    return GenerationResult(prompt.id, comps, prompt_tokens=outs[0][0][1],
                            attempts=attempts)

  async def _run(self, prompts: Iterator[Prompt], sampling: SamplingConfig,
                 stop: tuple[str, ...], out: 'queue.Queue', halt: threading.Event):
    client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key(),
                                max_retries=0, timeout=self.timeout)
    sem = asyncio.Semaphore(self.concurrency)

    async def worker():
      while not halt.is_set():
        try:
          prompt = next(prompts)
        except StopIteration:
          return
        out.put(await self._one(client, sem, prompt, sampling, stop))

    async def watcher(tasks):
      while not halt.is_set() and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
      for t in tasks:
        t.cancel()

    try:
      tasks = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
      watch = asyncio.create_task(watcher(tasks))
      results = await asyncio.gather(*tasks, return_exceptions=True)
      await watch
      for r in results:
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
          raise r
    finally:
      await client.close()

  def generate(self, prompts: Iterable[Prompt], sampling: SamplingConfig,
               stop: tuple[str, ...] = ()) -> Iterator[GenerationResult]:
    """Yields one result per prompt as requests complete (any order)."""
    out: queue.Queue = queue.Queue()
    halt = threading.Event()
    done = object()
    stop = tuple(dict.fromkeys(tuple(stop) + tuple(sampling.stop)))

    def runner():
      try:
        asyncio.run(self._run(iter(prompts), sampling, stop, out, halt))
      except BaseException as e:  # pylint: disable=broad-except
        out.put(e)
      finally:
        out.put(done)

    thread = threading.Thread(target=runner, name='openai-backend', daemon=True)
    thread.start()
    try:
      while True:
        item = out.get()
        if item is done:
          break
        if isinstance(item, BaseException):
          raise item
        yield item
    finally:
      halt.set()
      thread.join(timeout=self.timeout + 5)
