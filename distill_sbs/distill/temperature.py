"""Teacher temperature scaling on stored top-k log-probs (FIRST).

The calibrated teacher distribution at a gold token position is
q_T(i) = softmax_i(lp_i / T) over the k stored ids (re-normalised, as the
default `topk_kl`). T minimises the mean NLL of the gold tokens on held-out
records; NLL(1/T) is convex, so a bounded scalar search (Brent) over log T
finds the optimum.

Gold token outside the stored top-k (`outside=`):
  'drop' (default): the token is left out of the NLL. The fit is then the
    conditional likelihood given gold ∈ top-k, which is exactly what the
    re-normalised distribution models, so it is consistent: if the teacher's
    log-probs are a true model's logits scaled by 1/T*, the fit recovers T*.
  'rest': the (k+1)-way distribution of `topk_kl(rest_bucket=True)` is used
    and the gold token gets the rest bucket's probability (use this T with
    `rest_bucket=True`).
Such tokens always count in the ECE (as wrong top-1 predictions).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import gin
import numpy as np
import scipy.optimize
import scipy.special

from distill_sbs.distill import io_utils
from distill_sbs.metrics import calibration

MANIFEST_KEY = 'teacher_temperature'


@dataclasses.dataclass(frozen=True)
class TemperatureFit:
  temperature: float
  nll_before: float       # mean NLL at T = 1 over the fitted tokens
  nll_after: float        # mean NLL at the fitted T
  num_tokens: int         # tokens seen
  num_outside: int        # tokens whose gold id is not in the top-k
  ece_before: float       # token-level top-1 ECE at T = 1
  ece_after: float        # token-level top-1 ECE at the fitted T
  outside: str

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def gold_positions(topk_ids: np.ndarray, gold_ids: np.ndarray) -> np.ndarray:
  """Index of the gold id among the k ids per token, −1 when absent. [N]."""
  topk_ids = np.asarray(topk_ids)
  gold_ids = np.asarray(gold_ids).reshape(-1)
  if topk_ids.ndim != 2 or topk_ids.shape[0] != gold_ids.shape[0]:
    raise ValueError(f'topk_ids must be [N, k] with N = len(gold_ids) = {gold_ids.size}; '
                     f'got {topk_ids.shape}')
  hit = topk_ids == gold_ids[:, None]
  return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def tempered_log_probs(topk_logprobs: np.ndarray, temperature: float, *,
                       rest_bucket: bool = False) -> np.ndarray:
  """NumPy twin of `losses.teacher_topk_log_probs`: [N, k] (or [N, k+1])."""
  lp = np.maximum(np.asarray(topk_logprobs, np.float64), -1e4)
  if rest_bucket:
    mass = np.minimum(scipy.special.logsumexp(lp, axis=-1, keepdims=True), np.log1p(-1e-6))
    lp = np.concatenate([lp, np.log(-np.expm1(mass))], axis=-1)
  return scipy.special.log_softmax(lp / temperature, axis=-1)


def topk_nll(temperature: float, topk_logprobs: np.ndarray, gold_pos: np.ndarray, *,
             outside: str = 'drop') -> float:
  """Mean NLL of the gold tokens under the tempered top-k distribution."""
  gold_pos = np.asarray(gold_pos)
  if outside == 'drop':
    keep = gold_pos >= 0
    if not keep.any():
      raise ValueError('no gold token falls inside the teacher top-k; cannot fit T')
    logq = tempered_log_probs(np.asarray(topk_logprobs)[keep], temperature)
    return float(-np.mean(np.take_along_axis(logq, gold_pos[keep][:, None], 1)))
  if outside == 'rest':
    logq = tempered_log_probs(topk_logprobs, temperature, rest_bucket=True)
    idx = np.where(gold_pos >= 0, gold_pos, logq.shape[1] - 1)
    return float(-np.mean(np.take_along_axis(logq, idx[:, None], 1)))
  raise ValueError(f"outside={outside!r}: use 'drop' or 'rest'")


def topk_ece(temperature: float, topk_logprobs: np.ndarray, gold_pos: np.ndarray, *,
             num_bins: int = 10) -> float:
  """Token-level ECE of the teacher's top-1 under the tempered top-k distribution."""
  logq = tempered_log_probs(topk_logprobs, temperature)
  conf = np.exp(logq.max(axis=1))
  correct = np.asarray(gold_pos) == logq.argmax(axis=1)
  return calibration.ece(np.clip(conf, 0.0, 1.0), correct, num_bins=num_bins)


def fit_temperature(topk_ids: np.ndarray, topk_logprobs: np.ndarray, gold_ids: np.ndarray,
                    *, bounds: tuple[float, float] = (0.05, 20.0), outside: str = 'drop',
                    num_bins: int = 10) -> TemperatureFit:
  """Fits the teacher temperature by bounded scalar NLL minimisation.

  Args:
    topk_ids: [N, k] teacher top-k ids, one row per gold token.
    topk_logprobs: [N, k] stored teacher log-probs.
    gold_ids: [N] gold token ids.
  """
  lo, hi = bounds
  if not 0 < lo < hi:
    raise ValueError(f'temperature bounds {bounds} must satisfy 0 < low < high')
  lps = np.asarray(topk_logprobs, np.float64)
  if lps.shape != np.asarray(topk_ids).shape:
    raise ValueError(f'topk_logprobs {lps.shape} and topk_ids {np.shape(topk_ids)} differ')
  pos = gold_positions(topk_ids, gold_ids)
  obj = lambda log_t: topk_nll(float(np.exp(log_t)), lps, pos, outside=outside)
  res = scipy.optimize.minimize_scalar(obj, bounds=(np.log(lo), np.log(hi)), method='bounded',
                                       options={'xatol': 1e-6})
  t = float(np.exp(res.x))
  return TemperatureFit(
      temperature=t, nll_before=obj(0.0), nll_after=float(res.fun), num_tokens=int(pos.size),
      num_outside=int(np.sum(pos < 0)), ece_before=topk_ece(1.0, lps, pos, num_bins=num_bins),
      ece_after=topk_ece(t, lps, pos, num_bins=num_bins), outside=outside)


def manifest_path(records: str) -> str:
  """manifest.json beside the records (`records` is a directory, file or pattern)."""
  if records.endswith(io_utils.MANIFEST):
    return records
  base = os.path.basename(records.rstrip('/'))
  is_files = any(c in base for c in '*?[') or '.tfrecord' in base
  d = os.path.dirname(records) if is_files and not os.path.isdir(records) else records
  return os.path.join(d, io_utils.MANIFEST)


def write_teacher_temperature(records: str, fit: TemperatureFit, **extra: Any) -> str:
  """Adds `teacher_temperature` (+ `teacher_calibration`) to the manifest, atomically."""
  path = manifest_path(records)
  manifest: dict[str, Any] = {}
  if os.path.exists(path):
    with open(path) as f:
      manifest = json.load(f)
    if not isinstance(manifest, dict):
      raise ValueError(f'{path}: manifest must be a JSON object')
  manifest[MANIFEST_KEY] = fit.temperature
  manifest['teacher_calibration'] = dict(fit.as_dict(), **extra)
  io_utils.write_json_atomic(path, manifest, sort_keys=True)
  return path


@gin.configurable
def read_teacher_temperature(records_dir: str = gin.REQUIRED,
                             default: Optional[float] = None) -> float:
  """The calibrated T from the records' manifest, for gin:
  `TopKDistillLoss.teacher_temperature = @read_teacher_temperature()`."""
  path = manifest_path(os.path.expanduser(records_dir))
  if os.path.exists(path):
    with open(path) as f:
      manifest = json.load(f)
    if MANIFEST_KEY in manifest:
      t = float(manifest[MANIFEST_KEY])
      if not t > 0:
        raise ValueError(f'{path}: {MANIFEST_KEY}={t} must be > 0')
      return t
  if default is None:
    raise FileNotFoundError(f'{path} has no {MANIFEST_KEY!r}; run '
                            f'`python -m distill_sbs.calibrate --records={records_dir}` first '
                            'or set read_teacher_temperature.default')
  return float(default)
