"""Crash-safe, resumable storage of generated records.

Layout under `{out_dir}/.parts-{split}/`:
  part-{run}-{seq}.tfrecord     finished records (schema.to_example)
  part-{run}-{seq}.index.jsonl  one line per record: id + stats (sidecar)
A part counts as done only once its `.tfrecord` has its final name. Both files
are written under temporary names, fsync'ed, and renamed index first, then
records; an index without its records (crash between the renames) is ignored
and removed. So a SIGKILL loses at most the unflushed part, never duplicates.

`{out_dir}/failures.jsonl` appends one line per failed example (id, reason,
attempts, run); failed ids are not done, so the next run retries them.
`{out_dir}/runs.jsonl` appends one summary line per finished or interrupted run.
"""
from __future__ import annotations

import glob
import json
import os
import time
import uuid
from typing import Any, Iterator, Mapping, Optional

import tensorflow as tf

from distill_sbs.data import schema

_REC = '.tfrecord'
_IDX = '.index.jsonl'


def _fsync_write(path: str, data: bytes) -> None:
  with open(path, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def append_jsonl(path: str, obj: Mapping[str, Any]) -> None:
  """Appends one JSON line and fsyncs (a torn last line is skipped on read)."""
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(obj, ensure_ascii=False, sort_keys=True) + '\n')
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: str) -> Iterator[dict]:
  """Yields the complete lines of a JSON-lines file (skips a torn last line)."""
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        yield json.loads(line)
      except json.JSONDecodeError:
        continue


class PartStore:
  """Append-only parts with a done-ids index; see the module docstring."""

  def __init__(self, out_dir: str, split: str, *, part_size: int = 64,
               part_seconds: float = 30.0, run_id: Optional[str] = None):
    if part_size < 1:
      raise ValueError(f'part_size must be >= 1, got {part_size}')
    self.out_dir = out_dir
    self.split = split
    self.dir = os.path.join(out_dir, f'.parts-{split}')
    self.part_size = part_size
    self.part_seconds = part_seconds
    self.run_id = run_id or time.strftime('%Y%m%d%H%M%S') + '-' + uuid.uuid4().hex[:6]
    self._seq = 0
    self._buf: list[tuple[bytes, dict]] = []
    self._buf_start = 0.0
    os.makedirs(self.dir, exist_ok=True)
    self._clean()

  @property
  def failures_path(self) -> str:
    return os.path.join(self.out_dir, 'failures.jsonl')

  @property
  def runs_path(self) -> str:
    return os.path.join(self.out_dir, 'runs.jsonl')

  def _clean(self) -> None:
    """Removes temporaries and indexes whose records never got their name."""
    for p in glob.glob(os.path.join(self.dir, '*.tmp')):
      os.remove(p)
    for idx in glob.glob(os.path.join(self.dir, '*' + _IDX)):
      if not os.path.exists(idx[:-len(_IDX)] + _REC):
        os.remove(idx)

  def parts(self) -> list[str]:
    """Finished part record files, oldest first."""
    return sorted(glob.glob(os.path.join(self.dir, 'part-*' + _REC)))

  def index(self) -> Iterator[dict]:
    """Index entries (id + stats) of every finished part."""
    for rec_path in self.parts():
      yield from read_jsonl(rec_path[:-len(_REC)] + _IDX)

  def done_ids(self) -> set[str]:
    return {e['id'] for e in self.index()}

  def add(self, record: Mapping[str, Any], stats: Mapping[str, Any]) -> None:
    """Buffers one record; flushes a part when full or old enough."""
    if not self._buf:
      self._buf_start = time.monotonic()
    self._buf.append((schema.to_example(record).SerializeToString(),
                      {'id': str(record['id']), **stats}))
    if (len(self._buf) >= self.part_size
        or time.monotonic() - self._buf_start >= self.part_seconds):
      self.flush()

  def flush(self) -> Optional[str]:
    """Finalises the buffered records as one part; returns its path."""
    if not self._buf:
      return None
    base = os.path.join(self.dir, f'part-{self.run_id}-{self._seq:05d}')
    self._seq += 1
    rec_tmp, idx_tmp = base + _REC + '.tmp', base + _IDX + '.tmp'
    with tf.io.TFRecordWriter(rec_tmp) as w:
      for raw, _ in self._buf:
        w.write(raw)
    with open(rec_tmp, 'rb+') as f:
      os.fsync(f.fileno())
    _fsync_write(idx_tmp, ''.join(
        json.dumps(s, ensure_ascii=False, sort_keys=True) + '\n'
        for _, s in self._buf).encode('utf-8'))
    os.replace(idx_tmp, base + _IDX)
    os.replace(rec_tmp, base + _REC)
    _fsync_dir(self.dir)
    self._buf = []
    return base + _REC

  def record_failure(self, example_id: str, reason: str, attempts: int) -> None:
    append_jsonl(self.failures_path, {'id': example_id, 'reason': reason,
                                      'attempts': attempts, 'run': self.run_id,
                                      'time': time.time()})

  def failures(self, run_id: Optional[str] = None) -> list[dict]:
    """Failure lines (of one run when given)."""
    return [f for f in read_jsonl(self.failures_path)
            if run_id is None or f.get('run') == run_id]

  def record_run(self, summary: Mapping[str, Any]) -> None:
    append_jsonl(self.runs_path, {'run': self.run_id, **summary})

  def runs(self) -> list[dict]:
    return list(read_jsonl(self.runs_path))

  def records(self) -> Iterator[dict]:
    """Every stored record (a record id may appear once per part holding it)."""
    for path in self.parts():
      for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        yield schema.from_example(raw)
