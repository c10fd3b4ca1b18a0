"""Where prepared records live.

Layout: `{data_dir}/{ds}/{split}.tfrecord-XXXXX-of-YYYYY` plus
`{data_dir}/{ds}/manifest.json`. `data_dir()` is resolved at call time from
`$DISTILL_SBS_DATA_DIR` (default `~/.cache/distill_sbs/data`), so setting the
variable after `import distill_sbs.tasks` still takes effect.
"""
from __future__ import annotations

import os
from typing import Optional

from distill_sbs.data import schema
from distill_sbs.distill import io_utils

DATA_DIR_ENV = 'DISTILL_SBS_DATA_DIR'
RAW_DIR_ENV = 'DISTILL_SBS_RAW_DIR'
DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'distill_sbs', 'data')
MANIFEST = io_utils.MANIFEST
# The manifest's {shard file name: sha256} (written by `prepare`, checked by
# the record sources when they open a dataset).
SHARD_DIGESTS = 'shard_sha256'
SPLITS = ('train', 'validation', 'test')


def data_dir(override: Optional[str] = None) -> str:
  """The records root: `override`, else `$DISTILL_SBS_DATA_DIR`, else the default."""
  path = override or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
  return os.path.expanduser(path)


def raw_dir(override: Optional[str] = None) -> Optional[str]:
  """The raw paper-layout directory: `override`, else `$DISTILL_SBS_RAW_DIR`."""
  path = override or os.environ.get(RAW_DIR_ENV)
  return os.path.expanduser(path) if path else None


def dataset_dir(ds: str, root: Optional[str] = None) -> str:
  return os.path.join(data_dir(root), ds)


def split_pattern(ds: str, split: str, root: Optional[str] = None) -> str:
  """Glob of the shards of one split, e.g. `.../cqa/train.tfrecord-*-of-*`."""
  return os.path.join(dataset_dir(ds, root), schema.shard_pattern(split))


def manifest_path(ds: str, root: Optional[str] = None) -> str:
  return os.path.join(dataset_dir(ds, root), MANIFEST)
