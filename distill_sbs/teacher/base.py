"""The teacher backend `Protocol` and the values that cross it."""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Optional, Protocol, Sequence

import gin
import numpy as np

from distill_sbs.teacher.prompts import Prompt


@gin.configurable(module='distill_sbs.teacher')
@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the teacher samples. `num_samples > 1` enables self-consistency."""
  num_samples: int = 1
  temperature: float = 0.0
  top_p: float = 1.0
  max_tokens: int = 256
  top_logprobs: int = 0        # HTTP: top_logprobs per token (0 = none)
  seed: Optional[int] = None
  stop: Sequence[str] = ()     # extra stop sequences (the prompt file adds its own)

  def __post_init__(self):
    object.__setattr__(self, 'stop', tuple(self.stop))
    if self.num_samples < 1:
      raise ValueError(f'SamplingConfig.num_samples must be >= 1, got {self.num_samples}')
    if self.temperature < 0:
      raise ValueError(f'SamplingConfig.temperature must be >= 0, got {self.temperature}')
    if not 0 < self.top_p <= 1:
      raise ValueError(f'SamplingConfig.top_p must be in (0, 1], got {self.top_p}')
    if self.max_tokens < 1:
      raise ValueError(f'SamplingConfig.max_tokens must be >= 1, got {self.max_tokens}')
    if not 0 <= self.top_logprobs <= 20:
      raise ValueError(f'SamplingConfig.top_logprobs must be in [0, 20], got '
                       f'{self.top_logprobs}')
    if self.num_samples > 1 and self.temperature == 0:
      raise ValueError('self-consistency (num_samples > 1) needs temperature > 0')

  def as_json(self) -> dict:
    return dataclasses.asdict(self) | {'stop': list(self.stop)}


@dataclasses.dataclass
class Completion:
  """One sampled completion.

  HTTP backends fill the string-token log-probs; the local T5 teacher fills
  `target_ids` [L] (generated ids through EOS) and `topk_ids` / `topk_logprobs`
  [L, k] from teacher-forced scoring of that target.
  """
  text: str
  finish_reason: str = ''
  num_tokens: int = 0
  tokens: Optional[list[str]] = None
  token_logprobs: Optional[list[float]] = None
  top_logprobs: Optional[list[list[tuple[str, float]]]] = None
  # Chat responses: the UTF-8 bytes of each token / alternative (None where unsent).
  token_bytes: Optional[list[Optional[list[int]]]] = None
  top_bytes: Optional[list[list[Optional[list[int]]]]] = None
  target_ids: Optional[np.ndarray] = None
  topk_ids: Optional[np.ndarray] = None
  topk_logprobs: Optional[np.ndarray] = None
  vocab_size: Optional[int] = None   # of the vocabulary `topk_ids` index


@dataclasses.dataclass
class GenerationResult:
  """The teacher's answer to one prompt, or the reason it has none."""
  id: str
  completions: list[Completion] = dataclasses.field(default_factory=list)
  prompt_tokens: int = 0
  error: Optional[str] = None   # set when every attempt failed
  attempts: int = 1

  @property
  def ok(self) -> bool:
    return self.error is None and bool(self.completions)


class TeacherBackend(Protocol):
  """Turns prompts into completions; results may arrive in any order."""
  name: str          # 'openai' | 'local' | ...
  model: str         # model name / checkpoint path (for the manifest)

  def generate(self, prompts: Iterable[Prompt], sampling: SamplingConfig,
               stop: Sequence[str] = ()) -> Iterator[GenerationResult]:
    """Yields exactly one result per prompt (failures carry `error`);
    `stop` are the prompt file's stop sequences."""
    ...

  def record_fields(self) -> dict:
    """Constant record fields (e.g. `teacher_vocab_hash`); may be empty."""
    ...

  def close(self) -> None:
    ...
