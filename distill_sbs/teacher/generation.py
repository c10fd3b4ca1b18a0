"""Generate rationales for a dataset with a teacher, resumably, into TFRecords.

`run(config, backend, sampling)`:
  1. loads the inputs (prepared records of `dataset/split`, or a JSON-lines file),
  2. skips ids already stored in `{out_dir}/.parts-{split}` (see `store.py`),
  3. streams few-shot prompts through the backend, parses each completion with
     `data.parsers` (self-consistency vote when `num_samples > 1`), and stores
     a record per example; failures go to `failures.jsonl` and are retried on
     the next run,
  4. writes `{split}.tfrecord-*` (atomically, input order, one record per id)
     and `manifest.json` (counts, parse failures, teacher accuracy, backend,
     model, prompt hash, sampling, wall time, tokens/s).

Top-k from an HTTP teacher (`--top_logprobs=k`): token ids of the student's
own vocabulary ('token_id:N', vLLM) are stored as they are; otherwise the
teacher's tokens and alternatives (its own tokenizer) are carried onto the
student's vocabulary by `data.cross_tokenizer.carry_topk` (`CarryConfig`), the
raw teacher top-k is kept in `teacher_tokens_raw` and the manifest's
`cross_tokenizer` entry names the teacher tokenizer and what survived.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import shutil
import sys
import time
from typing import Any, Iterator, Mapping, Optional, Sequence

import gin
import numpy as np
import tqdm

from distill_sbs.data import cross_tokenizer
from distill_sbs.data import paths
from distill_sbs.data import schema
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.distill import io_utils
from distill_sbs.teacher import inputs as inputs_lib
from distill_sbs.teacher import prompts as prompts_lib
from distill_sbs.teacher import self_consistency
from distill_sbs.teacher import store as store_lib
from distill_sbs.teacher.base import Completion, GenerationResult, SamplingConfig

_TOKEN_ID = re.compile(r'^token_id:(\d+)$')


@gin.configurable(module='distill_sbs.teacher')
@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """What to generate and where (the backend and sampling are separate)."""
  out_dir: str = ''
  dataset: Optional[str] = None      # names inputs, prompts and parser
  split: str = 'train'
  data_dir: Optional[str] = None     # default: paths.data_dir()
  input_jsonl: Optional[str] = None  # instead of the prepared dataset
  prompt_file: Optional[str] = None  # overrides tasks/data/prompts/{ds}.json
  chat: bool = False                 # chat messages instead of one string
  max_examples: int = 0              # 0 = all
  num_shards: int = 0                # 0 = one per 50k records
  part_size: int = 64                # records per crash-safe part
  part_seconds: float = 30.0         # ... or flush a part this often
  keep_parse_failures: bool = True   # write unparsable examples (empty label)
  progress: bool = True
  # Prepared splits copied unchanged into out_dir (e.g. ('validation', 'test'))
  # so out_dir is a complete `records_dir` for `tasks.sbs.register_sbs_tasks`.
  copy_splits: Sequence[str] = ()

  def __post_init__(self):
    if not self.out_dir:
      raise ValueError('GenerationConfig.out_dir (--out_dir) is required')
    if not self.dataset and not self.input_jsonl:
      raise ValueError('need --dataset or --input_jsonl')
    if not self.dataset and not self.prompt_file:
      raise ValueError('--input_jsonl without --dataset needs --prompt_file '
                       '(its "dataset" names the format and parser)')
    object.__setattr__(self, 'copy_splits', tuple(self.copy_splits))
    if self.split in self.copy_splits:
      raise ValueError(f'--copy_splits must not include the generated split {self.split!r}')
    if self.max_examples < 0:
      raise ValueError(f'--max_examples must be >= 0, got {self.max_examples}')


@gin.configurable(module='distill_sbs.teacher')
@dataclasses.dataclass(frozen=True)
class CarryConfig:
  """Cross-tokenizer top-k: an HTTP teacher's top-k in its own tokenizer carried
  onto the student's vocabulary (`data/cross_tokenizer.py`)."""
  enabled: bool = True
  teacher_tokenizer: str = ''        # named in the manifest (e.g. 'Qwen/Qwen2.5-7B-Instruct')
  convention: str = 'auto'           # 'auto' | 'text' | 'sentencepiece' | 'byte_bpe'
  mismatch: str = 'zero'             # not one-to-one positions: 'zero' | 'uld'
  ambiguous: str = 'first'           # alternatives shorter than a student piece: 'first' | 'rest'
  k: int = 5                         # student top-k rows
  student_spm_path: Optional[str] = None  # default: data.vocab.get_vocabulary()
  keep_raw: bool = True              # store the teacher's own top-k (teacher_tokens_raw)

  def __post_init__(self):
    if self.mismatch not in cross_tokenizer.MISMATCH_MODES:
      raise ValueError(f'CarryConfig.mismatch={self.mismatch!r}: expected one of '
                       f'{cross_tokenizer.MISMATCH_MODES}')
    if self.ambiguous not in cross_tokenizer.AMBIGUOUS_MODES:
      raise ValueError(f'CarryConfig.ambiguous={self.ambiguous!r}: expected one of '
                       f'{cross_tokenizer.AMBIGUOUS_MODES}')
    if self.convention not in ('auto',) + cross_tokenizer.CONVENTIONS:
      raise ValueError(f'CarryConfig.convention={self.convention!r}')
    if self.k < 1:
      raise ValueError(f'CarryConfig.k must be >= 1, got {self.k}')


class Carrier:
  """Applies a `CarryConfig` with the student vocabulary resolved once."""

  def __init__(self, config: CarryConfig, vocabulary=None):
    self.config = config
    self.vocab = vocabulary or vocab_lib.get_vocabulary(config.student_spm_path)
    self.sv = cross_tokenizer.student_vocab(self.vocab)
    self.vocab_hash = vocab_lib.vocab_hash(self.vocab)

  def fields(self, c: Completion, stop: Sequence[str] = ()
             ) -> Optional[tuple[dict[str, Any], dict[str, Any]]]:
    """(record fields, stats) of one completion with string-token log-probs."""
    if not c.tokens or not c.top_logprobs:
      return None
    cfg = self.config
    tok, top, conv = cross_tokenizer.decode_teacher_tokens(
        c.tokens, c.top_logprobs, c.text, convention=cfg.convention,
        tokens_bytes=c.token_bytes, top_bytes=c.top_bytes)
    sids = list(self.vocab.encode(c.text)) + [self.vocab.eos_id]
    ids, lps, _, st = cross_tokenizer.carry_topk_with_stats(
        self.sv, sids, tok, top, k=cfg.k, mismatch=cfg.mismatch, stop=stop,
        ambiguous=cfg.ambiguous)
    fields = schema.encode_topk(ids, lps, self.vocab.vocab_size)
    fields.update(teacher_target_ids=np.asarray(sids, np.int64),
                  teacher_topk_field='llm_output', teacher_vocab_hash=self.vocab_hash)
    if cfg.keep_raw:
      fields['teacher_tokens_raw'] = cross_tokenizer.encode_teacher_topk(tok, top)
    stats = {k: v for k, v in st.as_dict().items() if not k.endswith('_share')}
    return fields, dict(stats, convention=conv)

  def describe(self, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The manifest's `cross_tokenizer` entry: config, student vocab, totals."""
    total = cross_tokenizer.CarryStats()
    conventions: dict[str, int] = {}
    for e in entries:
      c = e.get('carry')
      if c:
        total.add(cross_tokenizer.CarryStats(
            **{f: c[f] for f in cross_tokenizer.CarryStats.__dataclass_fields__}))
        conventions[c['convention']] = conventions.get(c['convention'], 0) + 1
    return {**dataclasses.asdict(self.config), 'student_vocabulary': str(self.vocab),
            'student_vocab_hash': self.vocab_hash, 'conventions': conventions,
            **total.as_dict()}


def _http_topk(c: Completion) -> Optional[dict[str, Any]]:
  """Top-k ids/log-probs from 'token_id:N' tokens (vLLM), else None."""
  if not c.tokens or not c.top_logprobs:
    return None
  ids = [_TOKEN_ID.match(t) for t in c.tokens]
  if not all(ids):
    return None
  k = max(len(t) for t in c.top_logprobs)
  if k == 0:
    return None
  top_ids = np.zeros((len(c.tokens), k), np.int64)
  top_lps = np.full((len(c.tokens), k), -1e4, np.float32)
  for i, alts in enumerate(c.top_logprobs):
    for j, (tok, lp) in enumerate(alts[:k]):
      m = _TOKEN_ID.match(tok)
      if m is None:
        return None
      top_ids[i, j], top_lps[i, j] = int(m.group(1)), lp
  target = np.asarray([int(m.group(1)) for m in ids], np.int64)
  fields = schema.encode_topk(top_ids, top_lps, int(max(top_ids.max(), target.max())) + 1)
  return {**fields, 'teacher_target_ids': target, 'teacher_topk_field': 'llm_output'}


def build_record(ds: str, ex: inputs_lib.Example, result: GenerationResult,
                 extra_fields: Mapping[str, Any], carrier: Optional[Carrier] = None,
                 stop: Sequence[str] = ()) -> tuple[dict, dict]:
  """(record, index stats) for one successful generation; `carrier` carries
  a string-token top-k onto the student's vocabulary."""
  comps = result.completions
  if len(comps) == 1:
    v = self_consistency.vote(ds, [comps[0].text])
    vote_share = 1.0
  else:
    v = self_consistency.vote(ds, [c.text for c in comps])
    vote_share = v.vote_share
  kept = comps[v.index]
  p = v.parsed
  rec: dict[str, Any] = {'id': ex.id, 'inputs': ex.inputs, 'label': ex.label,
                         'llm_label': p.label if p.ok else '',
                         'rationale': p.rationale if p.ok else '',
                         'llm_output': kept.text, 'vote_share': vote_share}
  if kept.topk_ids is not None:
    rec.update(schema.encode_topk(kept.topk_ids, kept.topk_logprobs,
                                  int(kept.vocab_size or 1 << 32)))
    rec['teacher_target_ids'] = np.asarray(kept.target_ids, np.int64)
    rec['teacher_topk_field'] = 'llm_output'
  carried = None
  if kept.topk_ids is None:
    token_id_topk = _http_topk(kept)
    rec.update(token_id_topk or {})
    if token_id_topk is None and carrier is not None:
      carried = carrier.fields(kept, stop)
      if carried:
        rec.update(carried[0])
  rec.update(extra_fields)
  if carried:   # the carried ids index the student's vocabulary
    rec['teacher_vocab_hash'] = carrier.vocab_hash
  correct = None
  if ex.label:
    correct = bool(p.ok and self_consistency.labels_agree(ds, ex.label, p.label))
  stats = {'parse_ok': p.ok, 'parse_error': p.error, 'correct': correct,
           'prompt_tokens': result.prompt_tokens,
           'completion_tokens': sum(c.num_tokens for c in comps),
           'num_samples': len(comps), 'vote_share': vote_share,
           'attempts': result.attempts}
  if carried:
    stats['carry'] = carried[1]
  if kept.tokens is not None and ('teacher_topk_ids' not in rec or carried):
    stats['logprobs'] = {'tokens': kept.tokens, 'token_logprobs': kept.token_logprobs,
                         'top_logprobs': kept.top_logprobs}
  return rec, stats


def _num_shards(config: GenerationConfig, n: int) -> int:
  return config.num_shards or max(1, math.ceil(n / 50_000))


def finalize(config: GenerationConfig, store: store_lib.PartStore,
             examples: Sequence[inputs_lib.Example]) -> tuple[list[str], dict[str, dict]]:
  """Writes the final shards (input order, one record per id)."""
  wanted = {ex.id: i for i, ex in enumerate(examples)}
  index: dict[str, dict] = {}
  for e in store.index():
    if e['id'] in wanted and e['id'] not in index:
      index[e['id']] = e
  records: dict[str, dict] = {}
  for rec in store.records():
    rid = rec['id']
    if rid in wanted and rid not in records:
      if config.keep_parse_failures or index.get(rid, {}).get('parse_ok', True):
        records[rid] = rec
  ordered = [records[ex.id] for ex in examples if ex.id in records]
  files = schema.write_shards(config.out_dir, config.split, ordered,
                              _num_shards(config, len(ordered)))
  lp_path = os.path.join(config.out_dir, f'{config.split}.logprobs.jsonl')
  lp_entries = [(ex.id, index[ex.id]['logprobs']) for ex in examples
                if ex.id in index and 'logprobs' in index[ex.id]]
  if lp_entries:
    tmp = lp_path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      for rid, lp in lp_entries:
        f.write(json.dumps({'id': rid, **lp}, ensure_ascii=False) + '\n')
    os.replace(tmp, lp_path)
  return files, index


def _manifest(config, ds, spec, style, backend, sampling, examples, index,
              files, store, failed_ids, run_wall_s, run_tokens) -> dict:
  entries = [index[ex.id] for ex in examples if ex.id in index]
  parse_fail = [e['id'] for e in entries if not e['parse_ok']]
  written = len(entries) if config.keep_parse_failures else len(entries) - len(parse_fail)
  with_gold = [e for e in entries if e.get('correct') is not None]
  parsed_gold = [e for e in with_gold if e['parse_ok']]
  runs = store.runs()
  total_wall = sum(r.get('wall_s', 0.0) for r in runs)
  total_tokens = sum(e.get('completion_tokens', 0) for e in entries)
  failures = {f['id']: f['reason'] for f in store.failures(store.run_id)
              if f['id'] in failed_ids}
  describe = getattr(backend, 'describe', None)
  return {
      'dataset': ds, 'split': config.split,
      'source': config.input_jsonl or paths.split_pattern(ds, config.split, config.data_dir),
      'complete': not failed_ids,
      'files': [os.path.basename(f) for f in files],
      'counts': {
          'inputs': len(examples),
          'generated': len(entries),
          'written': written,
          'parsed': len(entries) - len(parse_fail),
          'parse_failures': len(parse_fail),
          'failed': len(failed_ids),
          'with_gold': len(with_gold),
      },
      'parse_failure_ids': parse_fail,
      'failures': failures,
      'teacher_accuracy': (sum(e['correct'] for e in with_gold) / len(with_gold)
                           if with_gold else None),
      'teacher_accuracy_parsed': (sum(e['correct'] for e in parsed_gold) / len(parsed_gold)
                                  if parsed_gold else None),
      'mean_vote_share': (float(np.mean([e['vote_share'] for e in entries]))
                          if entries else None),
      'backend': describe() if describe else {'backend': backend.name,
                                              'model': backend.model},
      'model': backend.model,
      'prompt': {'style': style, 'hash': spec.hash(style), 'file': spec.source,
                 'num_exemplars': len(spec.exemplars)},
      'sampling': sampling.as_json(),
      'wall_time_s': total_wall,
      'run_wall_time_s': run_wall_s,
      'completion_tokens': total_tokens,
      'prompt_tokens': sum(e.get('prompt_tokens', 0) for e in entries),
      'tokens_per_s': run_tokens / run_wall_s if run_wall_s > 0 else None,
      'runs': len(runs),
      'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
  }


def check_job(out_dir: str, split: str, job: dict) -> None:
  """Records what generates into `out_dir`; a rerun must match (no mixing of
  teachers, prompts or sampling settings in one output)."""
  path = os.path.join(out_dir, f'.job-{split}.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      old = json.load(f)
    diff = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
    if diff:
      raise ValueError(f'{out_dir} holds a generation job with different {diff} '
                       f'(stored {[old.get(k) for k in diff]}, now '
                       f'{[job.get(k) for k in diff]}); use a new --out_dir')
    return
  io_utils.write_json_atomic(path, job, indent=1, sort_keys=True)


def copy_prepared_splits(config: GenerationConfig, ds: str) -> list[str]:
  """Copies `config.copy_splits` shards from the prepared data dir into out_dir."""
  copied = []
  for split in config.copy_splits:
    files = sorted(glob.glob(paths.split_pattern(ds, split, config.data_dir)))
    if not files:
      raise FileNotFoundError(f'--copy_splits: no prepared {ds}/{split} records match '
                              f'{paths.split_pattern(ds, split, config.data_dir)}')
    for old in glob.glob(os.path.join(config.out_dir, schema.shard_pattern(split))):
      os.remove(old)
    for f in files:
      dst = os.path.join(config.out_dir, os.path.basename(f))
      shutil.copyfile(f, dst + '.tmp')
      os.replace(dst + '.tmp', dst)
      copied.append(os.path.basename(f))
  return copied


def run(config: GenerationConfig, backend, sampling: SamplingConfig,
        carry: Optional[CarryConfig] = None) -> dict:
  """Generates what is missing, then writes the shards and the manifest.

  `carry` (default: the gin-configured `CarryConfig()`) applies when the teacher
  returns string-token log-probs (`sampling.top_logprobs > 0`).
  """
  t0 = time.monotonic()
  spec = prompts_lib.load_spec(config.dataset, config.prompt_file)
  ds = spec.dataset
  style = 'chat' if config.chat else 'completion'
  if not config.input_jsonl:
    src_dir = paths.dataset_dir(ds, config.data_dir)
    if os.path.abspath(config.out_dir) == os.path.abspath(src_dir):
      raise ValueError(f'--out_dir={config.out_dir!r} is the prepared dataset directory; '
                       'choose another directory (it would overwrite its manifest)')
  if config.copy_splits and config.input_jsonl:
    raise ValueError('--copy_splits needs --dataset inputs, not --input_jsonl')
  examples = inputs_lib.load_examples(
      ds, config.split, data_dir=config.data_dir, input_jsonl=config.input_jsonl,
      max_examples=config.max_examples)
  os.makedirs(config.out_dir, exist_ok=True)
  carry = carry or CarryConfig()
  carrier = Carrier(carry) if carry.enabled and sampling.top_logprobs else None
  job = {'dataset': ds, 'split': config.split, 'backend': backend.name,
         'model': backend.model, 'prompt_hash': spec.hash(style),
         'sampling': sampling.as_json(), 'source': config.input_jsonl or 'prepared'}
  if carrier is not None:
    job['cross_tokenizer'] = {**dataclasses.asdict(carry), 'student_vocab_hash': carrier.vocab_hash}
  check_job(config.out_dir, config.split, job)
  store = store_lib.PartStore(config.out_dir, config.split, part_size=config.part_size,
                              part_seconds=config.part_seconds)
  done = store.done_ids()
  todo = [ex for ex in examples if ex.id not in done]
  by_id = {ex.id: ex for ex in todo}
  extra = backend.record_fields()

  def prompt_iter() -> Iterator[prompts_lib.Prompt]:
    for ex in todo:
      yield prompts_lib.build_prompt(spec, ex.id, ex.inputs, style)

  failed: set[str] = set()
  n_ok = n_parse_fail = run_tokens = 0
  interrupted = True
  bar = tqdm.tqdm(total=len(todo), unit='ex', desc=f'{ds}/{config.split}',
                  disable=not config.progress or not todo, file=sys.stderr,
                  mininterval=0.5, smoothing=0.1)
  try:
    for result in backend.generate(prompt_iter(), sampling, stop=spec.stop):
      ex = by_id[result.id]
      if not result.ok:
        failed.add(ex.id)
        store.record_failure(ex.id, result.error or 'no completion', result.attempts)
      else:
        rec, stats = build_record(ds, ex, result, extra, carrier,
                                  tuple(spec.stop) + tuple(sampling.stop))
        store.add(rec, stats)
        n_ok += 1
        n_parse_fail += not stats['parse_ok']
        run_tokens += stats['completion_tokens']
      bar.update(1)
      bar.set_postfix(failed=len(failed), unparsed=n_parse_fail, refresh=False)
    interrupted = False
  finally:
    bar.close()
    store.flush()
    store.record_run({'wall_s': time.monotonic() - t0, 'generated': n_ok,
                      'failed': len(failed), 'completion_tokens': run_tokens,
                      'interrupted': interrupted})
  stored = store.done_ids()
  failed_ids = {ex.id for ex in examples if ex.id not in stored}
  files, index = finalize(config, store, examples)
  files += copy_prepared_splits(config, ds)
  run_wall = time.monotonic() - t0
  manifest = _manifest(config, ds, spec, style, backend, sampling, examples, index,
                       files, store, failed_ids, run_wall, run_tokens)
  if carrier is not None:
    manifest['cross_tokenizer'] = carrier.describe(
        [index[ex.id] for ex in examples if ex.id in index])
    # Unnamed: the served model's name stands for its tokenizer.
    manifest['cross_tokenizer']['teacher_tokenizer'] = carry.teacher_tokenizer or backend.model
  io_utils.write_json_atomic(os.path.join(config.out_dir, io_utils.MANIFEST), manifest)
  return manifest
