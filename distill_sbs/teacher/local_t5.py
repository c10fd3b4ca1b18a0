"""Local T5-family teacher (Flan-T5 / Flan-UL2 / our own checkpoints) in JAX.

Per batch of prompts: tokenize (EOS-terminated, left-truncated to
`max_input_length`, padded to a power-of-two length bucket and to a fixed row
count divisible by the device count), run the jit-compiled decoder of
`distill_sbs.models.generate` with the batch sharded over the 'data' axis of a
('data', 'model') mesh of all devices and the parameters replicated (or, with
`model_parallel > 1`, split over 'model' by T5X's logical axis rules), collecting the
teacher's top-k at each generated position while decoding (a target that is not
the generated tokens — cut by a stop sequence, or ended by the length limit — is
scored teacher-forced with `models.topk_scores` instead) to keep the top-k token ids and
log-probs (log-softmax of the logits) at every target position.

The stored target (`Completion.target_ids`) always ends with EOS: the generated
ids before EOS (or before the length limit, or a generated PAD) + EOS; when a
stop sequence cuts the text, the re-tokenized cut text + EOS. The top-k
belongs to exactly that target ([L, k], L = len(target)), from decoding or teacher-forced.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Optional, Sequence

import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from distill_sbs import models
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.teacher.base import Completion, GenerationResult, SamplingConfig
from distill_sbs.teacher.prompts import Prompt

EOS_ID = 1
PAD_ID = 0


def _bucket(n: int, lo: int, hi: int) -> int:
  b = lo
  while b < n:
    b *= 2
  return min(b, hi)


def load_teacher(checkpoint: str, model_config: Optional[models.T5Config] = None
                 ) -> tuple[models.T5Config, Any]:
  """(config, params) from an HF directory, or (with `model_config`) from any
  checkpoint `models.checkpoint_formats.read_params` understands (our runs, T5X)."""
  path = os.path.expanduser(checkpoint)
  if os.path.isfile(os.path.join(path, 'config.json')):
    return models.load_hf_checkpoint(path)
  if model_config is None:
    raise ValueError(f'--checkpoint={checkpoint!r} is not a Hugging Face directory '
                     '(config.json + model.safetensors); for our own checkpoints bind '
                     'LocalT5Backend.model_config = @distill_sbs.models.T5Config() in gin')
  from distill_sbs.models import checkpoint_formats  # pylint: disable=g-import-not-at-top
  return model_config, checkpoint_formats.read_params(path)


@gin.configurable(module='distill_sbs.teacher')
class LocalT5Backend:
  """`TeacherBackend` running a T5 encoder-decoder on the local devices."""
  name = 'local'

  def __init__(self, checkpoint: Optional[str] = None, model: Optional[str] = None, *,
               batch_size: int = 16, k: int = 5, max_input_length: int = 1024,
               model_config: Optional[models.T5Config] = None,
               spm_path: Optional[str] = None, seed: int = 0, model_parallel: int = 1,
               config: Optional[models.T5Config] = None, params: Any = None,
               vocabulary: Any = None, devices: Optional[Sequence[Any]] = None):
    if (checkpoint is None) == (params is None):
      raise ValueError('LocalT5Backend needs --checkpoint (or config + params)')
    if batch_size < 1 or k < 1 or max_input_length < 2:
      raise ValueError(f'LocalT5Backend: batch_size={batch_size}, k={k}, '
                       f'max_input_length={max_input_length} must be positive')
    if checkpoint is not None:
      config, params = load_teacher(checkpoint, model_config)
      vocabulary = vocabulary or models.load_vocabulary(os.path.expanduser(checkpoint))
    if vocabulary is None:
      vocabulary = vocab_lib.get_vocabulary(spm_path) if spm_path else vocab_lib.get_vocabulary()
    if vocabulary.vocab_size > config.vocab_size:
      raise ValueError(f'vocabulary has {vocabulary.vocab_size} ids but the teacher '
                       f'config has vocab_size={config.vocab_size}')
    self.config = config
    self.vocabulary = vocabulary
    self.model = model or (checkpoint or 'local-t5')
    self.checkpoint = checkpoint
    self.batch_size = int(batch_size)
    self.k = int(k)
    self.max_input_length = int(max_input_length)
    self.seed = int(seed)
    devs = list(devices or jax.devices())
    if model_parallel < 1 or len(devs) % model_parallel:
      raise ValueError(f'LocalT5Backend.model_parallel={model_parallel} must divide the '
                       f'{len(devs)} devices')
    self.model_parallel = int(model_parallel)
    self.mesh = Mesh(np.asarray(devs).reshape(-1, self.model_parallel), ('data', 'model'))
    self._ndev = self.mesh.shape['data']   # rows of a batch must divide this
    self.params = jax.device_put(params, self._param_shardings(config, params))
    self.stats = {'batches': 0, 'truncated_prompts': 0, 'generated_tokens': 0,
                  'topk_from_decoding': 0, 'topk_teacher_forced': 0}
    try:
      self._vocab_hash = vocab_lib.vocab_hash(vocabulary)
    except TypeError:  # A vocabulary vocab_hash does not know: no hash.
      self._vocab_hash = ''

  def record_fields(self) -> dict:
    return {'teacher_vocab_hash': self._vocab_hash} if self._vocab_hash else {}

  def describe(self) -> dict:
    return {'backend': self.name, 'model': self.model, 'checkpoint': self.checkpoint,
            'batch_size': self.batch_size, 'topk': self.k,
            'max_input_length': self.max_input_length,
            'devices': int(self.mesh.devices.size), 'model_parallel': self.model_parallel,
            'vocab_size': self.config.vocab_size, 'teacher_vocab_hash': self._vocab_hash}

  def close(self) -> None:
    pass

  # -- tokenization ----------------------------------------------------------
  def encode_prompt(self, text: str) -> list[int]:
    ids = list(self.vocabulary.encode(text)) + [EOS_ID]
    if len(ids) > self.max_input_length:
      self.stats['truncated_prompts'] += 1
      ids = ids[-self.max_input_length:]
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    size = self.vocabulary.vocab_size
    return self.vocabulary.decode([int(i) for i in ids if 1 < int(i) < size])

  def _param_shardings(self, config: models.T5Config, params: Any) -> Any:
    """Replicated, or (model_parallel > 1) T5X's standard logical axis rules."""
    if self.model_parallel == 1:
      return NamedSharding(self.mesh, P())
    from flax import linen as nn  # pylint: disable=g-import-not-at-top
    from distill_sbs.training import partitioning  # pylint: disable=g-import-not-at-top
    x = jax.ShapeDtypeStruct((1, 8), np.int32)
    abstract = jax.eval_shape(lambda a: models.Transformer(config).init(
        jax.random.PRNGKey(0), a, a, a, enable_dropout=False), x)['params']
    shardings = nn.logical_to_mesh_sharding(
        nn.get_partition_spec(abstract), self.mesh,
        partitioning.standard_logical_axis_rules())
    return jax.tree.map(lambda _, sh: sh, params, shardings)

  def _rows(self, n: int) -> int:
    return -(-n // self._ndev) * self._ndev

  def _shard(self, x: np.ndarray) -> jax.Array:
    return jax.device_put(x, NamedSharding(self.mesh, P('data')))

  @staticmethod
  def _target(row: np.ndarray) -> tuple[np.ndarray, str]:
    """Generated ids before the first EOS, and why generation ended. A (rare)
    generated PAD ends the text too, so no target has an interior 0 (which
    scoring treats as padding)."""
    end = np.nonzero((row == EOS_ID) | (row == PAD_ID))[0]
    if not end.size:
      return row, 'length'
    return row[:end[0]], 'stop' if row[end[0]] == EOS_ID else 'pad'

  def _target_topk(self, enc_dev: jax.Array, tokens: np.ndarray, targets: np.ndarray,
                   lengths: Sequence[int], dec_ids: np.ndarray, dec_lps: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's top-k at every target position [rows, T, k].

    Decoding collected the top-k of each generated position; a target whose
    first L−1 tokens are the generated ones (L ≤ the decode length) has them at
    all of its L positions, since position j sees only the prefix before it. A
    target that differs (cut by a stop sequence and re-encoded, or ended by the
    length limit, whose appended EOS was never a decoding step) is scored
    teacher-forced (`models.topk_scores`) instead, in one batched call.
    """
    rows, width = targets.shape
    top_ids = np.zeros((rows, width, self.k), np.int32)       # [rows, T, k]
    top_lps = np.zeros((rows, width, self.k), np.float32)
    decoded = [r < len(lengths) and lengths[r] <= tokens.shape[1] and
               np.array_equal(tokens[r, :lengths[r] - 1], targets[r, :lengths[r] - 1])
               for r in range(rows)]
    for r, ok in enumerate(decoded):
      if ok:
        top_ids[r, :lengths[r]] = dec_ids[r, :lengths[r]]
        top_lps[r, :lengths[r]] = dec_lps[r, :lengths[r]]
    self.stats['topk_from_decoding'] += sum(decoded)
    if not all(decoded[:len(lengths)]):
      forced_ids, forced_lps = models.topk_scores(self.config, self.params, enc_dev,
                                                  self._shard(targets), self.k)
      forced_ids, forced_lps = np.asarray(forced_ids), np.asarray(forced_lps)
      for r in range(len(lengths)):
        if not decoded[r]:
          top_ids[r], top_lps[r] = forced_ids[r], forced_lps[r]
          self.stats['topk_teacher_forced'] += 1
    return top_ids, top_lps

  # -- one batch ---------------------------------------------------------------
  def generate_batch(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                     stop: Sequence[str] = (), batch_index: int = 0
                     ) -> list[GenerationResult]:
    n = sampling.num_samples
    encoded = [self.encode_prompt(p.flat_text()) for p in prompts]
    length = _bucket(max(len(e) for e in encoded), 16, self.max_input_length)
    rows = self._rows(self.batch_size * n)
    enc = np.zeros((rows, length), np.int32)                # [rows, length]
    for i, e in enumerate(encoded):
      for s in range(n):
        enc[i * n + s, :len(e)] = e
    enc_dev = self._shard(enc)
    method = 'sample' if sampling.temperature > 0 else 'greedy'
    rng = jax.random.PRNGKey(self.seed * 1_000_003 + (sampling.seed or 0) + batch_index)
    tokens, _, dec_ids, dec_lps = models.generate(
        self.config, self.params, enc_dev, max_decode_length=sampling.max_tokens,
        method=method, temperature=max(sampling.temperature, 1e-6),
        topp=sampling.top_p if sampling.top_p < 1 else 0.0, rng=rng, return_topk=self.k)
    tokens = np.asarray(tokens)                              # [rows, max_tokens]
    # Targets always end with EOS (the FIRST contract: the field's tokens + EOS).
    width = sampling.max_tokens + 1
    targets = np.zeros((rows, width), np.int32)               # [rows, max_tokens + 1]
    texts, finish, lengths = [], [], []
    for r in range(len(prompts) * n):
      ids, reason = self._target(tokens[r])
      text = self.decode(ids)
      cut = min((text.find(s) for s in stop if s and s in text), default=-1)
      if cut >= 0:
        text, reason = text[:cut], 'stop'
        ids = np.asarray(list(self.vocabulary.encode(text))[:sampling.max_tokens], np.int32)
      ids = np.append(ids[ids != EOS_ID], EOS_ID).astype(np.int32)
      targets[r, :len(ids)] = ids
      lengths.append(len(ids))
      texts.append(text)
      finish.append(reason)
    top_ids, top_lps = self._target_topk(enc_dev, tokens, targets, lengths,
                                         np.asarray(dec_ids), np.asarray(dec_lps))
    self.stats['batches'] += 1
    results = []
    for i, p in enumerate(prompts):
      comps = []
      for s in range(n):
        r = i * n + s
        length_r = lengths[r]
        self.stats['generated_tokens'] += length_r
        comps.append(Completion(
            text=texts[r], finish_reason=finish[r], num_tokens=length_r,
            target_ids=targets[r, :length_r].astype(np.int64),
            topk_ids=top_ids[r, :length_r], topk_logprobs=top_lps[r, :length_r],
            vocab_size=self.config.vocab_size))
      results.append(GenerationResult(p.id, comps, prompt_tokens=len(encoded[i])))
    return results

  def generate(self, prompts: Iterable[Prompt], sampling: SamplingConfig,
               stop: Sequence[str] = ()) -> Iterator[GenerationResult]:
    stop = tuple(dict.fromkeys(tuple(stop) + tuple(sampling.stop)))
    batch: list[Prompt] = []
    index = 0
    for p in prompts:
      batch.append(p)
      if len(batch) == self.batch_size:
        yield from self.generate_batch(batch, sampling, stop, index)
        batch, index = [], index + 1
    if batch:
      yield from self.generate_batch(batch, sampling, stop, index)
