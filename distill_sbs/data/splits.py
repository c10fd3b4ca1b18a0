"""Deterministic seed-based splits and nested data fractions."""
from __future__ import annotations

import numpy as np

FRACTIONS = (12.5, 25.0, 50.0, 75.0, 100.0)


def holdout(n: int, fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
  """Splits range(n) into (kept, held_out) with round(fraction·n) held out, drawn
  by a seed permutation; both lists in ascending (source) order."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'holdout fraction must be in [0, 1), got {fraction}')
  perm = np.random.RandomState(seed).permutation(n)
  n_out = int(round(fraction * n))
  return sorted(int(i) for i in perm[n_out:]), sorted(int(i) for i in perm[:n_out])


def fraction_size(n: int, pct: float) -> int:
  if not 0.0 < pct <= 100.0:
    raise ValueError(f'data fraction must be in (0, 100] percent, got {pct}')
  return int(round(n * pct / 100.0))


def fraction_mask(n: int, pct: float, seed: int = 0) -> np.ndarray:
  """bool [n]: the first round(pct% · n) positions of a fixed seed permutation.

  Nested: fraction_mask(n, a) implies fraction_mask(n, b) for a <= b.
  """
  perm = np.random.RandomState(seed).permutation(n)
  mask = np.zeros(n, dtype=bool)
  mask[perm[:fraction_size(n, pct)]] = True
  return mask


def fraction_name(pct: float) -> str:
  """12.5 -> '12p5pct', 25 -> '25pct' (task-name suffix)."""
  s = f'{pct:g}'.replace('.', 'p')
  return f'{s}pct'
