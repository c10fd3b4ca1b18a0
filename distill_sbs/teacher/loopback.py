"""A loopback OpenAI-compatible server (127.0.0.1) for tests, benchmarks and offline demos.

It serves `POST {base}/completions` and `POST {base}/chat/completions` with the
OpenAI response shapes (including `logprobs`), answers with a `Responder`
callable, and injects faults on a fixed fraction of requests chosen by the
global request counter (`FaultPlan`): 429 with `Retry-After`, 500, a stall past
the client's timeout, or a malformed JSON body.

Log-probs: by default pseudo tokens of 4 characters with fixed alternatives; a
`LoopbackTokenizer` (e.g. a test's own tokenizer and model) answers with its
tokens, their spellings (e.g. byte-level BPE 'Ġcat') and top-k alternatives,
and (chat shape) their UTF-8 bytes. `LocalBackendResponder` serves a local
teacher backend this way (its token ids as 'token_id:N', its top-k).

  with LoopbackServer(responder, latency_s=0.05) as server:
    client = OpenAI(base_url=server.base_url, api_key='x')
"""
from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from typing import Any, Callable, Optional, Protocol, Sequence

# (prompt text of the request, decoded request body) -> completion text.
Responder = Callable[[str, dict], str]
# Per generated token: (spelling, log-prob, [(alternative spelling, log-prob)]).
TokenLogprobs = list[tuple[str, float, list[tuple[str, float]]]]


class LoopbackTokenizer(Protocol):
  """A teacher tokenizer + distribution for the log-probs the server returns."""

  def logprobs(self, prompt: str, text: str, k: int) -> TokenLogprobs:
    """The tokens of completion `text` of `prompt` and their top-`k`."""
    ...

  def token_bytes(self, token: str) -> Optional[bytes]:
    """UTF-8 bytes of a spelling (the chat shape's `bytes`), None to omit."""
    ...


@dataclasses.dataclass(frozen=True)
class FaultPlan:
  """Request `i` (0-based, global) gets a fault when `i % period` is listed."""
  period: int = 10
  rate_limit: Sequence[int] = ()      # 429 with Retry-After: retry_after
  server_error: Sequence[int] = ()    # 500
  stall: Sequence[int] = ()           # sleeps stall_s before answering
  malformed: Sequence[int] = ()       # 200 with a truncated JSON body
  retry_after: str = '0.05'
  stall_s: float = 2.0

  def fault(self, i: int) -> Optional[str]:
    r = i % self.period
    for name in ('rate_limit', 'server_error', 'stall', 'malformed'):
      if r in getattr(self, name):
        return name
    return None


def prompt_text(body: dict) -> str:
  """The request's prompt: `prompt` (completions) or the messages joined."""
  if 'messages' in body:
    return '\n\n'.join(str(m.get('content', '')) for m in body['messages'])
  prompt = body.get('prompt', '')
  return prompt[0] if isinstance(prompt, list) else str(prompt)


def _tokens(text: str) -> list[str]:
  """Whitespace-preserving pseudo tokens: runs of 1-4 characters."""
  return [text[i:i + 4] for i in range(0, len(text), 4)] or ['']


def _completion_logprobs(text: str, k: int) -> dict:
  toks = _tokens(text)
  top = [{t: -0.1, t + '#': -2.5, **({f'alt{j}': -3.0 - j for j in range(max(k - 2, 0))})}
         for t in toks]
  return {'tokens': toks, 'token_logprobs': [-0.1] * len(toks),
          'top_logprobs': top,
          'text_offset': [4 * i for i in range(len(toks))]}


def _tokenizer_completion_logprobs(tok: LoopbackTokenizer, prompt: str, text: str,
                                   k: int) -> dict:
  rows = tok.logprobs(prompt, text, k)
  offsets, pos = [], 0
  for t, _, _ in rows:
    offsets.append(pos)
    pos += len((tok.token_bytes(t) or b'').decode('utf-8', errors='ignore'))
  return {'tokens': [t for t, _, _ in rows], 'token_logprobs': [lp for _, lp, _ in rows],
          'top_logprobs': [dict(alts[:k]) for _, _, alts in rows], 'text_offset': offsets}


def _tokenizer_chat_logprobs(tok: LoopbackTokenizer, prompt: str, text: str, k: int) -> dict:
  as_list = lambda b: None if b is None else list(b)  # noqa: E731
  return {'content': [
      {'token': t, 'logprob': lp, 'bytes': as_list(tok.token_bytes(t)),
       'top_logprobs': [{'token': a, 'logprob': alp, 'bytes': as_list(tok.token_bytes(a))}
                        for a, alp in alts[:k]]}
      for t, lp, alts in tok.logprobs(prompt, text, k)]}


def _chat_logprobs(text: str, k: int) -> dict:
  content = []
  for t in _tokens(text):
    alts = [(t, -0.1), (t + '#', -2.5)] + [(f'alt{j}', -3.0 - j) for j in range(max(k - 2, 0))]
    content.append({'token': t, 'logprob': -0.1, 'bytes': list(t.encode()),
                    'top_logprobs': [{'token': a, 'logprob': lp, 'bytes': None}
                                     for a, lp in alts[:k]]})
  return {'content': content}


class LoopbackServer:
  """Threaded HTTP server on 127.0.0.1 speaking the OpenAI completions API."""

  def __init__(self, responder: Responder, *, latency_s: float = 0.0,
               faults: FaultPlan = FaultPlan(), base_path: str = '/v1',
               tokenizer: Optional[LoopbackTokenizer] = None):
    self.responder = responder
    self.tokenizer = tokenizer
    self.latency_s = latency_s
    self.faults = faults
    self.base_path = base_path.rstrip('/')
    self.lock = threading.Lock()
    self.num_requests = 0
    self.served: dict[str, int] = {}   # fault name (or 'ok') -> count
    self.auth_headers: set[str] = set()
    self.endpoints: dict[str, int] = {}  # request path -> count
    self._httpd: Optional[http.server.ThreadingHTTPServer] = None
    self._thread: Optional[threading.Thread] = None

  @property
  def base_url(self) -> str:
    assert self._httpd is not None, 'server not started'
    return f'http://127.0.0.1:{self._httpd.server_address[1]}{self.base_path}'

  def _count(self, what: str) -> None:
    with self.lock:
      self.served[what] = self.served.get(what, 0) + 1

  def _answer(self, path: str, body: dict) -> dict:
    n = int(body.get('n') or 1)
    text_fn = lambda: self.responder(prompt_text(body), body)  # noqa: E731
    texts = [text_fn() for _ in range(n)]
    usage = {'prompt_tokens': len(_tokens(prompt_text(body))),
             'completion_tokens': sum(len(_tokens(t)) for t in texts)}
    usage['total_tokens'] = usage['prompt_tokens'] + usage['completion_tokens']
    base = {'id': f'cmpl-{self.num_requests}', 'created': int(time.time()),
            'model': body.get('model', 'loopback'), 'usage': usage}
    prompt, tok = prompt_text(body), self.tokenizer
    if path.endswith('/chat/completions'):
      k = int(body.get('top_logprobs') or 0)
      chat_lp = ((lambda t: _tokenizer_chat_logprobs(tok, prompt, t, k)) if tok
                 else (lambda t: _chat_logprobs(t, k)))
      return {**base, 'object': 'chat.completion', 'choices': [
          {'index': i, 'message': {'role': 'assistant', 'content': t},
           'finish_reason': 'stop',
           'logprobs': chat_lp(t) if body.get('logprobs') else None}
          for i, t in enumerate(texts)]}
    k = body.get('logprobs')
    text_lp = ((lambda t: _tokenizer_completion_logprobs(tok, prompt, t, int(k))) if tok
               else (lambda t: _completion_logprobs(t, int(k))))
    return {**base, 'object': 'text_completion', 'choices': [
        {'index': i, 'text': t, 'finish_reason': 'stop',
         'logprobs': text_lp(t) if k is not None else None}
        for i, t in enumerate(texts)]}

  def _make_handler(self):
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = 'HTTP/1.1'
      disable_nagle_algorithm = True  # Headers and body go out without delay.

      def log_message(self, *args):  # Quiet.
        del args

      def _send(self, status: int, payload: bytes, headers: Sequence[tuple[str, str]] = ()):
        try:
          self.send_response(status)
          self.send_header('Content-Type', 'application/json')
          self.send_header('Content-Length', str(len(payload)))
          for k, v in headers:
            self.send_header(k, v)
          self.end_headers()
          self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
          pass

      def do_POST(self):  # noqa: N802
        length = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(length)
        with server.lock:
          i = server.num_requests
          server.num_requests += 1
          server.auth_headers.add(self.headers.get('Authorization', ''))
        path = self.path.split('?')[0]
        with server.lock:
          server.endpoints[path] = server.endpoints.get(path, 0) + 1
        if not (path.endswith('/completions')):
          server._count('not_found')
          return self._send(404, b'{"error": {"message": "not found"}}')
        fault = server.faults.fault(i)
        if server.latency_s:
          time.sleep(server.latency_s)
        if fault == 'rate_limit':
          server._count(fault)
          return self._send(429, b'{"error": {"message": "rate limited"}}',
                            [('Retry-After', server.faults.retry_after)])
        if fault == 'server_error':
          server._count(fault)
          return self._send(500, b'{"error": {"message": "boom"}}')
        if fault == 'stall':
          server._count(fault)
          time.sleep(server.faults.stall_s)
          return self._send(503, b'{"error": {"message": "stalled"}}')
        try:
          body = json.loads(raw)
          payload = json.dumps(server._answer(path, body)).encode()
        except Exception as e:  # pylint: disable=broad-except
          server._count('bad_request')
          return self._send(400, json.dumps({'error': {'message': str(e)}}).encode())
        if fault == 'malformed':
          server._count(fault)
          return self._send(200, payload[:len(payload) // 2])
        server._count('ok')
        return self._send(200, payload)

    return Handler

  def start(self) -> 'LoopbackServer':
    self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self._make_handler())
    self._httpd.daemon_threads = True
    self._thread = threading.Thread(target=self._httpd.serve_forever,
                                    kwargs={'poll_interval': 0.05}, daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    if self._httpd is not None:
      self._httpd.shutdown()
      self._httpd.server_close()
      self._httpd = None

  def __enter__(self) -> 'LoopbackServer':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


class LocalBackendResponder:
  """Serves a local teacher (`local_t5.LocalT5Backend`: T5 or decoder-only) as an
  OpenAI-compatible endpoint: `LoopbackServer(r, tokenizer=r)` with
  `r = LocalBackendResponder(backend)`.

  Each request runs `backend.generate_batch` on its prompt (`max_tokens`,
  `temperature`, `top_p`, `seed`, `stop` from the body; one request at a time).
  Log-probs are the backend's: its target ids (through EOS), each id's
  teacher-forced log-prob (`backend.target_logprobs`) and the top-k it stored,
  tokens spelled 'token_id:N' (vLLM's `return_tokens_as_token_ids`) so a client
  reads the ids back exactly; a token's bytes are the vocabulary's decoding of
  its id (None where that is empty, e.g. EOS).
  """

  def __init__(self, backend: Any, max_kept: int = 1024):
    self.backend = backend
    self.max_kept = max_kept
    self._lock = threading.Lock()
    self._requests = 0
    self._completions: dict[tuple[str, str], Any] = {}  # (prompt, text) -> Completion

  def __call__(self, prompt: str, body: dict) -> str:
    from distill_sbs.teacher.base import SamplingConfig  # pylint: disable=g-import-not-at-top
    from distill_sbs.teacher.prompts import Prompt  # pylint: disable=g-import-not-at-top
    stop = body.get('stop') or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    sampling = SamplingConfig(max_tokens=int(body.get('max_tokens') or 16),
                              temperature=float(body.get('temperature') or 0.0),
                              top_p=float(body.get('top_p') or 1.0), seed=body.get('seed'))
    with self._lock:
      (result,) = self.backend.generate_batch([Prompt(id='loopback', text=prompt)],
                                              sampling, stop, batch_index=self._requests)
      self._requests += 1
      c = result.completions[0]
      if len(self._completions) >= self.max_kept:
        self._completions.pop(next(iter(self._completions)))
      self._completions[(prompt, c.text)] = c
    return c.text

  def logprobs(self, prompt: str, text: str, k: int) -> TokenLogprobs:
    with self._lock:
      c = self._completions[(prompt, text)]
      token_lps = self.backend.target_logprobs(prompt, c.target_ids)
    spell = lambda i: f'token_id:{int(i)}'  # noqa: E731
    return [(spell(t), float(lp), [(spell(a), float(alp)) for a, alp in
                                   zip(c.topk_ids[j, :k], c.topk_logprobs[j, :k])])
            for j, (t, lp) in enumerate(zip(c.target_ids, token_lps))]

  def token_bytes(self, token: str) -> Optional[bytes]:
    if not token.startswith('token_id:'):
      return None
    text = self.backend.decode([int(token[len('token_id:'):])])
    return text.encode('utf-8') if text else None


def serve_forever(responder: Responder, **kwargs: Any) -> None:
  """Runs a server until interrupted (for manual demos)."""
  with LoopbackServer(responder, **kwargs) as s:
    print(f'loopback OpenAI-compatible server at {s.base_url}', flush=True)
    try:
      while True:
        time.sleep(3600)
    except KeyboardInterrupt:
      pass
