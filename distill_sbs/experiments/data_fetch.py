"""Finds the paper's raw data: env var, the shared copy, or the public archive.

Order (first hit wins):
  1. `$DISTILL_SBS_RAW_DIR` (must hold one folder per dataset, e.g. `cqa/`);
  2. `../shared/data/sbs` beside the checkout;
  3. a previously extracted download in the cache dir;
  4. download `datasets.zip` of google-research/distilling-step-by-step (pinned
     commit), verify its git blob SHA-1 (the checksum the repository's tree
     records), extract it into the cache dir.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Callable, Mapping, Optional

RAW_DIR_ENV = 'DISTILL_SBS_RAW_DIR'
CACHE_ENV = 'DISTILL_SBS_CACHE_DIR'
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED_RAW_DIR = REPO_ROOT.parent / 'shared' / 'data' / 'sbs'

ARCHIVE_COMMIT = 'ef944263c9ddfd40a9888557f3e7d17513fd1a7e'
ARCHIVE_URL = ('https://github.com/google-research/distilling-step-by-step/raw/'
               f'{ARCHIVE_COMMIT}/datasets.zip')
# `git ls-tree ef94426 datasets.zip`: the archive's git blob SHA-1.
ARCHIVE_GIT_SHA1 = 'fb9d88a0b44c2daac1ec1639f0bdae993e7e5bcd'
DATASETS = ('cqa', 'svamp', 'esnli', 'anli1')


class DataUnavailableError(RuntimeError):
  """The raw data could not be found nor downloaded."""


def default_cache_dir(env: Mapping[str, str] = os.environ) -> pathlib.Path:
  if env.get(CACHE_ENV):
    return pathlib.Path(env[CACHE_ENV])
  return pathlib.Path.home() / '.cache' / 'distill_sbs'


def git_blob_sha1(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
  """SHA-1 of `b'blob <size>\\0' + content`, as git names the file's blob."""
  path = pathlib.Path(path)
  h = hashlib.sha1(b'blob %d\0' % path.stat().st_size)
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(chunk), b''):
      h.update(block)
  return h.hexdigest()


def _has_dataset(path: pathlib.Path, dataset: Optional[str]) -> bool:
  names = (dataset,) if dataset else DATASETS
  return any((path / n).is_dir() for n in names)


def find_layout_root(path: pathlib.Path,
                     dataset: Optional[str] = None) -> Optional[pathlib.Path]:
  """The folder (path or one/two levels below) holding the dataset folders."""
  if _has_dataset(path, dataset):
    return path
  for child in sorted(p for p in path.glob('*') if p.is_dir()):
    if _has_dataset(child, dataset):
      return child
    for grandchild in sorted(p for p in child.glob('*') if p.is_dir()):
      if _has_dataset(grandchild, dataset):
        return grandchild
  return None


def _progress_hook(log: Callable[[str], None]):
  state = {'last': -1}

  def hook(blocks: int, block_size: int, total: int):
    done = blocks * block_size
    if total > 0:
      pct = min(100, int(100 * done / total))
      if pct // 10 != state['last']:
        state['last'] = pct // 10
        log(f'  downloaded {done / 1e6:.1f} / {total / 1e6:.1f} MB ({pct}%)')
  return hook


def download_archive(dest: pathlib.Path, *, url: str = ARCHIVE_URL,
                     expected_git_sha1: Optional[str] = ARCHIVE_GIT_SHA1,
                     timeout: float = 30.0,
                     log: Callable[[str], None] = print) -> pathlib.Path:
  """Downloads `url` to `dest` (atomically) and verifies its git blob SHA-1."""
  dest.parent.mkdir(parents=True, exist_ok=True)
  log(f'downloading the paper data archive {url}')
  fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix='.part')
  os.close(fd)
  old_timeout = socket.getdefaulttimeout()
  socket.setdefaulttimeout(timeout)
  try:
    urllib.request.urlretrieve(url, tmp, reporthook=_progress_hook(log))
  except (urllib.error.URLError, OSError, ValueError) as e:
    os.unlink(tmp)
    raise DataUnavailableError(
        f'could not download {url} ({e}). You seem to be offline. Either set '
        f'{RAW_DIR_ENV} to a folder holding the unzipped datasets.zip of '
        'google-research/distilling-step-by-step (one folder per dataset: '
        f'cqa/, svamp/, esnli/, anli1/), or put it at {SHARED_RAW_DIR}, or '
        f'download it by hand to {dest} and rerun.') from e
  finally:
    socket.setdefaulttimeout(old_timeout)
  if expected_git_sha1:
    got = git_blob_sha1(tmp)
    if got != expected_git_sha1:
      os.unlink(tmp)
      raise DataUnavailableError(
          f'checksum mismatch for {url}: git blob SHA-1 {got}, expected '
          f'{expected_git_sha1}; refusing to use it.')
  os.replace(tmp, dest)
  return dest


def extract_archive(archive: pathlib.Path, out_dir: pathlib.Path,
                    expected_git_sha1: Optional[str] = ARCHIVE_GIT_SHA1,
                    log: Callable[[str], None] = print) -> pathlib.Path:
  """Verifies and extracts `archive` into `out_dir`; returns the layout root."""
  if expected_git_sha1:
    got = git_blob_sha1(archive)
    if got != expected_git_sha1:
      raise DataUnavailableError(
          f'{archive}: git blob SHA-1 {got} != expected {expected_git_sha1}; '
          'delete it and rerun to download it again.')
  log(f'extracting {archive} to {out_dir}')
  tmp = pathlib.Path(tempfile.mkdtemp(dir=out_dir.parent, prefix='.extract-'))
  try:
    with zipfile.ZipFile(archive) as zf:
      for member in zf.namelist():
        target = (tmp / member).resolve()
        if not str(target).startswith(str(tmp.resolve())):
          raise DataUnavailableError(f'{archive}: unsafe path {member!r}')
      zf.extractall(tmp)
    if out_dir.exists():
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  root = find_layout_root(out_dir)
  if root is None:
    raise DataUnavailableError(f'{archive} holds none of {DATASETS}')
  return root


def resolve_raw_dir(dataset: Optional[str] = None, *,
                    env: Mapping[str, str] = os.environ,
                    shared_dir: pathlib.Path = SHARED_RAW_DIR,
                    cache_dir: Optional[pathlib.Path] = None,
                    download: bool = True,
                    url: str = ARCHIVE_URL,
                    expected_git_sha1: Optional[str] = ARCHIVE_GIT_SHA1,
                    timeout: float = 30.0,
                    log: Callable[[str], None] = print) -> pathlib.Path:
  """Returns a folder holding `{dataset}/` in the paper's layout (see module doc)."""
  if env.get(RAW_DIR_ENV):
    path = pathlib.Path(env[RAW_DIR_ENV]).expanduser()
    root = find_layout_root(path, dataset) if path.is_dir() else None
    if root is None:
      want = dataset or ' or '.join(DATASETS)
      raise DataUnavailableError(
          f'{RAW_DIR_ENV}={path} does not hold a {want}/ folder (the unzipped '
          'datasets.zip of google-research/distilling-step-by-step)')
    log(f'raw data: {root} (from {RAW_DIR_ENV})')
    return root
  if shared_dir.is_dir() and _has_dataset(shared_dir, dataset):
    log(f'raw data: {shared_dir}')
    return shared_dir
  cache_dir = cache_dir or default_cache_dir(env)
  extracted = cache_dir / 'raw' / 'datasets'
  if extracted.is_dir():
    root = find_layout_root(extracted, dataset)
    if root is not None:
      log(f'raw data: {root} (cached download)')
      return root
  if not download:
    raise DataUnavailableError(
        f'no raw data: set {RAW_DIR_ENV}, or place it at {shared_dir}')
  archive = cache_dir / 'raw' / 'datasets.zip'
  if not archive.exists():
    download_archive(archive, url=url, expected_git_sha1=expected_git_sha1,
                     timeout=timeout, log=log)
  root = extract_archive(archive, extracted, expected_git_sha1, log=log)
  if dataset and not (root / dataset).is_dir():
    raise DataUnavailableError(f'{archive} has no {dataset}/ folder')
  return root


def main(argv: Optional[list[str]] = None) -> int:
  """`python -m distill_sbs.experiments.data_fetch [dataset]`: prints the dir."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    print(resolve_raw_dir(argv[0] if argv else None, log=lambda s: print(s, file=sys.stderr)))
  except DataUnavailableError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
