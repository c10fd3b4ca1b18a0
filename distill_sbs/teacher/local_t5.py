"""Local teacher in JAX: T5-family (Flan-T5 / Flan-UL2 / our own checkpoints) or
decoder-only (Llama / Qwen2 / Qwen3 / Gemma 3 text, `models.DecoderOnlyConfig`).

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

Decoder-only teachers: the prompt is the text's tokens (BOS first when the config
has `bos_id`; no EOS), left-aligned in the rows with `prompt_lengths`
(`decoder_only_decoding.generate`); EOS and padding are the config's
(`eos_ids`, `eos_ids[0]` appended to targets; `pad_id`), never the T5 constants
below: id 0 is a real token of those vocabularies, so only an EOS ends a
generation. The vocabulary is the checkpoint directory's (`spiece.model`, else
its `tokenizer.json` as `data.hf_vocab.HfTokenizerVocabulary`) unless
`vocabulary` (a `seqio.Vocabulary`) is given; a decoder-only teacher has no default.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from distill_sbs import models
from distill_sbs.data import hf_vocab
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.models import decoder_only_decoding
from distill_sbs.teacher.base import Completion, GenerationResult, SamplingConfig
from distill_sbs.teacher.prompts import Prompt

EOS_ID = 1   # T5 vocabularies; decoder-only teachers use their config's ids
PAD_ID = 0
TeacherConfig = Union[models.T5Config, models.DecoderOnlyConfig]


def _bucket(n: int, lo: int, hi: int) -> int:
  b = lo
  while b < n:
    b *= 2
  return min(b, hi)


def load_teacher(checkpoint: str, model_config: Optional[TeacherConfig] = None
                 ) -> tuple[TeacherConfig, Any]:
  """(config, params) from an HF directory, or (with `model_config`) from any
  checkpoint `models.checkpoint_formats.read_params` understands (our runs, T5X)."""
  path = os.path.expanduser(checkpoint)
  if os.path.isfile(os.path.join(path, 'config.json')):
    return models.load_hf_checkpoint(path)
  if model_config is None:
    raise ValueError(f'--checkpoint={checkpoint!r} is not a Hugging Face directory '
                     '(config.json + model.safetensors); for our own checkpoints bind '
                     'LocalT5Backend.model_config = @distill_sbs.models.T5Config() (or '
                     '@distill_sbs.models.DecoderOnlyConfig()) in gin')
  from distill_sbs.models import checkpoint_formats  # pylint: disable=g-import-not-at-top
  return model_config, checkpoint_formats.read_params(path)


def _checkpoint_vocabulary(path: str) -> Any:
  """The checkpoint directory's SentencePiece model (T5), else its Hugging Face
  `tokenizer.json` (decoder-only), else None."""
  vocabulary = models.load_vocabulary(path)
  if vocabulary is None and os.path.isfile(os.path.join(path, hf_vocab.TOKENIZER_FILE)):
    vocabulary = hf_vocab.HfTokenizerVocabulary(path)
  return vocabulary


@gin.configurable(module='distill_sbs.teacher')
class LocalT5Backend:
  """`TeacherBackend` running a T5 encoder-decoder or a decoder-only LM (chosen by
  the config type) on the local devices."""
  name = 'local'

  def __init__(self, checkpoint: Optional[str] = None, model: Optional[str] = None, *,
               batch_size: int = 16, k: int = 5, max_input_length: int = 1024,
               model_config: Optional[TeacherConfig] = None,
               spm_path: Optional[str] = None, seed: int = 0, model_parallel: int = 1,
               config: Optional[TeacherConfig] = None, params: Any = None,
               vocabulary: Any = None, devices: Optional[Sequence[Any]] = None):
    if (checkpoint is None) == (params is None):
      raise ValueError('LocalT5Backend needs --checkpoint (or config + params)')
    if batch_size < 1 or k < 1 or max_input_length < 2:
      raise ValueError(f'LocalT5Backend: batch_size={batch_size}, k={k}, '
                       f'max_input_length={max_input_length} must be positive')
    if checkpoint is not None:
      config, params = load_teacher(checkpoint, model_config)
      vocabulary = vocabulary or _checkpoint_vocabulary(os.path.expanduser(checkpoint))
    self.decoder_only = isinstance(config, models.DecoderOnlyConfig)
    if vocabulary is None and self.decoder_only:
      raise ValueError('LocalT5Backend: a decoder-only teacher needs vocabulary= (a '
                       "seqio.Vocabulary of the teacher's tokenizer) or a checkpoint "
                       'directory with tokenizer.json')
    if vocabulary is None:
      vocabulary = vocab_lib.get_vocabulary(spm_path) if spm_path else vocab_lib.get_vocabulary()
    if vocabulary.vocab_size > config.vocab_size:
      raise ValueError(f'vocabulary has {vocabulary.vocab_size} ids but the teacher '
                       f'config has vocab_size={config.vocab_size}')
    self.config = config
    self.vocabulary = vocabulary
    if self.decoder_only:
      self.eos_ids, self.pad_id = tuple(config.eos_ids), int(config.pad_id)
    else:
      self.eos_ids, self.pad_id = (EOS_ID,), PAD_ID
    self.eos_id = self.eos_ids[0]
    self.model = model or (checkpoint or ('local-decoder-only' if self.decoder_only
                                          else 'local-t5'))
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
            'vocab_size': self.config.vocab_size, 'teacher_vocab_hash': self._vocab_hash,
            'architecture': 'decoder_only' if self.decoder_only else 'encoder_decoder'}

  def close(self) -> None:
    pass

  # -- tokenization ----------------------------------------------------------
  def encode_prompt(self, text: str) -> list[int]:
    """T5: the text's ids + EOS; decoder-only: [BOS] + the text's ids (at least
    one id: an empty text without BOS is the pad id). Left-truncated (the BOS kept)."""
    ids = [int(i) for i in self.vocabulary.encode(text)]
    head = []
    if self.decoder_only:
      bos = self.config.bos_id
      head = [int(bos)] if bos is not None else ([] if ids else [self.pad_id])
    else:
      ids.append(EOS_ID)
    if len(head) + len(ids) > self.max_input_length:
      self.stats['truncated_prompts'] += 1
      ids = ids[len(head) + len(ids) - self.max_input_length:]
    return head + ids

  def decode(self, ids: Sequence[int]) -> str:
    size = self.vocabulary.vocab_size
    if self.decoder_only:
      skip = set(self.eos_ids) | ({self.config.bos_id} - {None})
      return self.vocabulary.decode([int(i) for i in ids
                                     if int(i) not in skip and 0 <= int(i) < size])
    return self.vocabulary.decode([int(i) for i in ids if 1 < int(i) < size])

  def _param_shardings(self, config: TeacherConfig, params: Any) -> Any:
    """Replicated, or (model_parallel > 1) T5X's standard logical axis rules."""
    if self.model_parallel == 1:
      return NamedSharding(self.mesh, P())
    from flax import linen as nn  # pylint: disable=g-import-not-at-top
    from distill_sbs.training import partitioning  # pylint: disable=g-import-not-at-top
    x = jax.ShapeDtypeStruct((1, 8), np.int32)
    if isinstance(config, models.DecoderOnlyConfig):
      abstract = jax.eval_shape(lambda a: models.DecoderOnlyTransformer(config).init(
          jax.random.PRNGKey(0), a, enable_dropout=False), x)['params']
    else:
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

  def _target(self, row: np.ndarray) -> tuple[np.ndarray, str]:
    """Generated ids before the first EOS, and why generation ended. T5: a (rare)
    generated PAD ends the text too, so no target has an interior 0 (which
    scoring treats as padding). Decoder-only: only an EOS of the config does
    (decoding pads after it; the pad id is a real token before it)."""
    eos = np.isin(row, self.eos_ids)
    end = np.nonzero(eos if self.decoder_only else eos | (row == PAD_ID))[0]
    if not end.size:
      return row, 'length'
    return row[:end[0]], 'stop' if eos[end[0]] else 'pad'

  def _target_topk(self, enc_dev: jax.Array, tokens: np.ndarray, targets: np.ndarray,
                   lengths: Sequence[int], dec_ids: np.ndarray, dec_lps: np.ndarray,
                   prompt_lengths: Optional[jax.Array] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's top-k at every target position [rows, T, k].

    Decoding collected the top-k of each generated position; a target whose
    first L−1 tokens are the generated ones (L ≤ the decode length) has them at
    all of its L positions, since position j sees only the prefix before it. A
    target that differs (cut by a stop sequence and re-encoded, or ended by the
    length limit, whose appended EOS was never a decoding step) is scored
    teacher-forced (`models.topk_scores`) instead, in one batched call
    (decoder-only: the prompts are `enc_dev` with `prompt_lengths`).
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
      options = {}
      if self.decoder_only:
        target_lengths = np.zeros((rows,), np.int32)
        target_lengths[:len(lengths)] = lengths
        options = {'prompt_lengths': prompt_lengths,
                   'target_lengths': self._shard(target_lengths)}
      forced_ids, forced_lps = models.topk_scores(self.config, self.params, enc_dev,
                                                  self._shard(targets), self.k, **options)
      forced_ids, forced_lps = np.asarray(forced_ids), np.asarray(forced_lps)
      for r in range(len(lengths)):
        if not decoded[r]:
          top_ids[r], top_lps[r] = forced_ids[r], forced_lps[r]
          self.stats['topk_teacher_forced'] += 1
    return top_ids, top_lps

  def target_logprobs(self, prompt_text: str, target_ids: Sequence[int]) -> np.ndarray:
    """The teacher's log-prob [L] of each id of `target_ids` given the prompt
    (teacher-forced `models.score`; what an HTTP server reports per token)."""
    prompt = self.encode_prompt(prompt_text)
    target = np.asarray(target_ids, np.int32)
    rows = self._rows(1)
    enc = np.full((rows, _bucket(len(prompt), 16, self.max_input_length)), self.pad_id,
                  np.int32)
    enc[:, :len(prompt)] = prompt
    tgt = np.full((rows, _bucket(len(target), 16, 1 << 20)), self.pad_id, np.int32)
    tgt[:, :len(target)] = target
    options = {}
    if self.decoder_only:
      options = {'prompt_lengths': self._shard(np.full((rows,), len(prompt), np.int32)),
                 'target_lengths': self._shard(np.full((rows,), len(target), np.int32))}
    out = models.score(self.config, self.params, self._shard(enc), self._shard(tgt),
                       **options)
    return np.asarray(out)[0, :len(target)]

  # -- one batch ---------------------------------------------------------------
  def generate_batch(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                     stop: Sequence[str] = (), batch_index: int = 0
                     ) -> list[GenerationResult]:
    n = sampling.num_samples
    encoded = [self.encode_prompt(p.flat_text()) for p in prompts]
    length = _bucket(max(len(e) for e in encoded), 16, self.max_input_length)
    rows = self._rows(self.batch_size * n)
    enc = np.full((rows, length), self.pad_id, np.int32)      # [rows, length]
    prompt_lengths = np.ones((rows,), np.int32)               # padding rows: one pad
    for i, e in enumerate(encoded):
      for s in range(n):
        enc[i * n + s, :len(e)] = e
        prompt_lengths[i * n + s] = len(e)
    enc_dev = self._shard(enc)
    lengths_dev = self._shard(prompt_lengths) if self.decoder_only else None
    method = 'sample' if sampling.temperature > 0 else 'greedy'
    rng = jax.random.PRNGKey(self.seed * 1_000_003 + (sampling.seed or 0) + batch_index)
    options = dict(max_decode_length=sampling.max_tokens, method=method,
                   temperature=max(sampling.temperature, 1e-6),
                   topp=sampling.top_p if sampling.top_p < 1 else 0.0, rng=rng,
                   return_topk=self.k)
    if self.decoder_only:  # left-aligned prompts, top-k collected while decoding
      tokens, _, dec_ids, dec_lps = decoder_only_decoding.generate(
          self.config, self.params, enc_dev, prompt_lengths=lengths_dev, **options)
    else:
      tokens, _, dec_ids, dec_lps = models.generate(self.config, self.params, enc_dev,
                                                    **options)
    tokens = np.asarray(tokens)                              # [rows, max_tokens]
    # Targets always end with EOS (the FIRST contract: the field's tokens + EOS).
    width = sampling.max_tokens + 1
    targets = np.full((rows, width), self.pad_id, np.int32)   # [rows, max_tokens + 1]
    texts, finish, lengths = [], [], []
    for r in range(len(prompts) * n):
      ids, reason = self._target(tokens[r])
      text = self.decode(ids)
      cut = min((text.find(s) for s in stop if s and s in text), default=-1)
      if cut >= 0:
        text, reason = text[:cut], 'stop'
        ids = np.asarray(list(self.vocabulary.encode(text))[:sampling.max_tokens], np.int32)
      ids = np.append(ids[~np.isin(ids, self.eos_ids)], self.eos_id).astype(np.int32)
      targets[r, :len(ids)] = ids
      lengths.append(len(ids))
      texts.append(text)
      finish.append(reason)
    top_ids, top_lps = self._target_topk(enc_dev, tokens, targets, lengths,
                                         np.asarray(dec_ids), np.asarray(dec_lps),
                                         lengths_dev)
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


LocalBackend = LocalT5Backend  # the same class (gin name: LocalT5Backend), any architecture
