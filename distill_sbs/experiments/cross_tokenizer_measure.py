r"""How much of a teacher's distribution survives `carry_topk` (docs/cross_tokenizer.md).

  python -m distill_sbs.experiments.cross_tokenizer_measure \
      --raw_dir=../shared/data/sbs --out=docs/cross_tokenizer_measure.json

The local teacher is a byte-level language model (interpolated Witten-Bell
n-gram, order 6) trained on the paper's CQA teacher completions (PaLM CoT,
`cqa/llm/train_CoT_{0..8}.json`, cut at the stop sequence '\n\nQ:'). Its
distribution over the next token of ANY tokenizer is exact: a tokenizer is a
piece set read by longest match, and P(next token = t | prefix) is the byte
model's probability that the longest piece starting the continuation is t
(`next_token_dist`: probability of reaching t's bytes minus that of reaching
a longer piece through t; branches below 1e-7 are cut). So for held-out
completions (`train_CoT_9.json`) we know, at every student token, both the
teacher's top-5 in the teacher's tokenizer (what a server returns) and the
teacher's exact distribution over the student's vocabulary. Per teacher
tokenizer (bytes; SentencePiece models larger and smaller than the student's;
the student's own as the reference), with either treatment of ambiguous
alternatives (`carry_topk(ambiguous='first' | 'rest')`), we report:
  aligned_share        student tokens aligned one to one,
  carried_mass_share   share of the teacher's top-5 mass carried onto student ids,
  kl_carried           mean KL(exact ‖ carried) over the (k+1) bins the loss sees
                       (the carried ids and the rest bucket), aligned tokens,
  exact_mass_on_carried  mean exact student probability on the carried ids,
  exact_top5_mass      mean exact probability of the student's own top 5.
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

import numpy as np

from distill_sbs.data import cross_tokenizer as ct

BOS = b'\x02'
PRUNE = 1e-7


class ByteNgram:
  """Interpolated Witten-Bell byte n-gram; `dist(context)` → [256] probabilities."""

  def __init__(self, texts: Sequence[bytes], order: int = 6):
    self.order = order
    self.tables: list[dict[bytes, tuple[np.ndarray, np.ndarray]]] = []
    for o in range(order):
      c = collections.Counter(t[i - o:i + 1] for t in texts for i in range(o, len(t)))
      by_ctx: dict[bytes, list[tuple[int, int]]] = collections.defaultdict(list)
      for key, n in c.items():
        by_ctx[key[:-1]].append((key[-1], n))
      self.tables.append({ctx: (np.asarray([b for b, _ in v]), np.asarray([n for _, n in v],
                                                                        np.float64))
                          for ctx, v in by_ctx.items()})

  @functools.lru_cache(maxsize=400_000)
  def dist(self, ctx: bytes) -> np.ndarray:
    p = np.full(256, 1.0 / 256)
    for o in range(self.order):
      if o > len(ctx):
        break
      entry = self.tables[o].get(ctx[len(ctx) - o:] if o else b'')
      if entry is None:
        break
      bs, ns = entry
      total, types = ns.sum(), len(ns)
      q = p * types
      q[bs] += ns
      p = q / (total + types)
    return p

  def context(self, prefix: bytes) -> bytes:
    return (BOS + prefix)[-(self.order - 1):]


class Trie:
  """Pieces (bytes → id) for longest-match tokenization and next-token mass."""

  def __init__(self, pieces: dict[bytes, int]):
    self.root: dict = {}
    for b, i in pieces.items():
      if not b:
        continue
      node = self.root
      for byte in b:
        node = node.setdefault(byte, {})
      node[None] = i

  def tokenize(self, text: bytes, unk: int = 2) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(text):
      node, j, best = self.root, i, None
      while j < len(text) and text[j] in node:
        node = node[text[j]]
        j += 1
        if None in node:
          best = (node[None], j)
      if best is None:
        out.append((unk, text[i:i + 1]))
        i += 1
      else:
        out.append((best[0], text[i:best[1]]))
        i = best[1]
    return out

  def first(self, text: bytes) -> Optional[int]:
    toks = self.tokenize(text[:64], unk=-1)
    return toks[0][0] if toks and toks[0][0] >= 0 else None


def next_token_dist(lm: ByteNgram, prefix: bytes, trie: Trie) -> dict[int, float]:
  """P(next longest-match token = id | prefix) under the byte model."""
  out: dict[int, float] = {}

  def walk(node, ctx, p):
    d = lm.dist(lm.context(ctx))
    below = 0.0
    for byte, child in node.items():
      if byte is None:
        continue
      pc = p * d[byte]
      if pc >= PRUNE:
        below += walk(child, ctx + bytes([byte]), pc)
    if None in node:
      out[node[None]] = max(p - below, 0.0)
      return p
    return below

  walk(trie.root, prefix, 1.0)
  return out


class LongestMatchVocab(ct.StudentVocab):
  """The student as a piece set read by longest match (the measure's tokenizer)."""

  def __init__(self, pieces: dict[bytes, int], eos_id: int = 1, unk_id: int = 2):
    # pylint: disable=super-init-not-called
    self.kind, self.eos_id, self.unk_id = 'pieces', eos_id, unk_id
    self._pieces = dict(pieces)
    self._bytes = {i: b for b, i in pieces.items()}
    self._bytes[unk_id] = b'\xff'
    self.trie = Trie(pieces)

  def piece_bytes(self, i: int) -> bytes:
    return self._bytes.get(int(i), b'')

  def first_id(self, text: bytes) -> Optional[int]:
    return self.trie.first(text)


def spm_pieces(model_file: str) -> dict[bytes, int]:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_file=model_file)
  out = {}
  for i in range(sp.get_piece_size()):
    if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i):
      continue
    out.setdefault(sp.id_to_piece(i).replace('\u2581', ' ').encode('utf-8'), i)
  return out


def byte_pieces() -> dict[bytes, int]:
  return {bytes([b]): b + 3 for b in range(256)}


def load_completions(raw_dir: str, files: Sequence[str], stop: str = '\n\nQ:') -> list[str]:
  out = []
  for name in files:
    with open(os.path.join(raw_dir, 'cqa', 'llm', name), encoding='utf-8') as f:
      for text in json.load(f):
        text = text.split(stop)[0].strip()
        if text:
          out.append(text)
  return out


def measure(lm: ByteNgram, student: LongestMatchVocab, teacher_pieces: dict[bytes, int],
            texts: Sequence[str], k: int = 5, ambiguous: str = 'first') -> dict[str, Any]:
  """The module's figures for one teacher tokenizer over `texts`."""
  t_trie = Trie(teacher_pieces)
  t_bytes = {i: b for b, i in teacher_pieces.items()}
  total = ct.CarryStats()
  kls, on_carried, top5 = [], [], []
  for text in texts:
    stream = b' ' + text.encode('utf-8')   # both sides read the dummy-prefix space
    t_toks = t_trie.tokenize(stream)
    tokens, topk, pos = [], [], 0
    for _, tb in t_toks:
      dist = next_token_dist(lm, stream[:pos], t_trie)
      best = sorted(dist.items(), key=lambda kv: -kv[1])[:k]
      topk.append([(t_bytes[i], float(np.log(max(p, 1e-30)))) for i, p in best])
      tokens.append(tb)
      pos += len(tb)
    s_toks = student.trie.tokenize(stream)
    sids = [i for i, _ in s_toks]
    ids, lps, w, st = ct.carry_topk_with_stats(student, sids, tokens, topk, k=k,
                                               ambiguous=ambiguous)
    total.add(st)
    pos = 0
    for r, (_, sb) in enumerate(s_toks):
      if w[r]:
        exact = next_token_dist(lm, stream[:pos], student.trie)
        present = lps[r] > ct.ABSENT_LOGPROB / 10
        q = np.exp(lps[r][present].astype(np.float64))
        p = np.asarray([exact.get(int(i), 0.0) for i in ids[r][present]])
        q_all = np.append(q, max(1.0 - q.sum(), 1e-12))
        p_all = np.append(p, max(1.0 - p.sum(), 0.0))
        nz = p_all > 0
        kls.append(float(np.sum(p_all[nz] * np.log(p_all[nz] / np.maximum(q_all[nz], 1e-12)))))
        on_carried.append(float(p.sum()))
        top5.append(float(sum(sorted(exact.values(), reverse=True)[:k])))
      pos += len(sb)
  d = total.as_dict()
  return {'texts': len(texts), 'student_tokens': total.positions,
          'aligned_share': d['aligned_share'], 'carried_mass_share': d['carried_mass_share'],
          'kl_carried': float(np.mean(kls)) if kls else None,
          'exact_mass_on_carried': float(np.mean(on_carried)) if on_carried else None,
          'exact_top5_mass': float(np.mean(top5)) if top5 else None}


def run(raw_dir: str, *, student_size: int = 1000, teacher_sizes: Sequence[int] = (4000, 500),
        num_texts: int = 60, order: int = 6, train_files: int = 9,
        work_dir: Optional[str] = None) -> dict[str, Any]:
  from distill_sbs.experiments import spm as spm_lib  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  train = load_completions(raw_dir, [f'train_CoT_{i}.json' for i in range(train_files)])
  held = load_completions(raw_dir, ['train_CoT_9.json'])[:num_texts]
  lm = ByteNgram([BOS + b' ' + t.encode('utf-8') for t in train], order=order)
  work = pathlib.Path(work_dir or tempfile.mkdtemp(prefix='xt_measure_'))
  models = {n: str(spm_lib.train_spm(train, work / f'spm{n}', vocab_size=n))
            for n in sorted({student_size, *teacher_sizes})}
  student = LongestMatchVocab(spm_pieces(models[student_size]))
  teachers = {'bytes (ByT5-like)': byte_pieces()}
  for n in teacher_sizes:
    teachers[f'SentencePiece {n}'] = spm_pieces(models[n])
  teachers[f'student\'s own (SentencePiece {student_size}, reference)'] = spm_pieces(
      models[student_size])
  results = {}
  for name, pieces in teachers.items():
    for mode in ('first', 'rest'):
      if mode == 'rest' and 'reference' in name:
        continue
      results[f'{name}, ambiguous={mode}'] = measure(lm, student, pieces, held, ambiguous=mode)
  return {'student': f'SentencePiece {student_size} (unigram, trained on the same text)',
          'teacher_model': f'byte {order}-gram (Witten-Bell) on {len(train)} CQA PaLM CoT '
                           'completions', 'held_out_texts': len(held), 'k': 5,
          'results': results, 'seconds': round(time.time() - t0, 1)}


def to_markdown(report: dict[str, Any]) -> str:
  rows = ['| teacher tokenizer | aligned 1:1 | top-5 mass carried | KL(exact ‖ carried) '
          '| exact mass on carried ids | exact top-5 mass |', '|---|---|---|---|---|---|']
  f = lambda x, fmt: 'n/a' if x is None else format(x + 0.0 if abs(x) > 5e-5 else 0.0, fmt)  # noqa: E731
  for name, r in report['results'].items():
    rows.append(f"| {name} | {f(100 * r['aligned_share'], '.1f')}% | "
                f"{f(100 * r['carried_mass_share'], '.1f')}% | {f(r['kl_carried'], '.4f')} | "
                f"{f(r['exact_mass_on_carried'], '.3f')} | {f(r['exact_top5_mass'], '.3f')} |")
  return '\n'.join(rows)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--raw_dir', required=True)
  p.add_argument('--out', default=None)
  p.add_argument('--student_size', type=int, default=1000)
  p.add_argument('--teacher_sizes', default='4000,500')
  p.add_argument('--num_texts', type=int, default=60)
  args = p.parse_args(argv)
  report = run(args.raw_dir, student_size=args.student_size,
               teacher_sizes=[int(x) for x in args.teacher_sizes.split(',')],
               num_texts=args.num_texts)
  print(to_markdown(report))
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == '__main__':
  main(sys.argv[1:])
