"""Checkpoint formats: reading parameters from any supported directory, T5X's
legacy layout (read and write), and assigning / placing them onto a model.

Readable without T5X installed:
  Hugging Face   `config.json` + safetensors (`hf_io.load_hf_checkpoint`)
  distill-sbs    a run directory, its `checkpoints/` directory or a step
                 directory `<N>/` (Orbax `state` item, parameters under `params/`)
  T5X Orbax      a model directory or `checkpoint_<N>/` (Orbax `state` item,
                 parameters under `target/`)
  T5X legacy     `checkpoint_<N>/checkpoint` (msgpack) + tensorstore arrays;
                 `write_t5x_checkpoint` writes it, and T5X restores it.
`read_params(path)` reads any of them; `assign_params` maps them onto a
model's parameters (T5X's `assignment_map`); `load_params` /
`load_initial_params` place them in a mesh. Run checkpointing (save, restore,
rotation) is `training/checkpoints.py`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from flax import traverse_util

from distill_sbs.models import hf_io
from distill_sbs.models import network

AssignmentMap = Sequence[tuple[str, Optional[str]]]


def _is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, 'config.json')) and any(
      f.endswith('.safetensors') or f.endswith('.safetensors.index.json')
      for f in os.listdir(path))


_T5X_STEP_DIR = re.compile(r'checkpoint_(\d+)')
_ORBAX_MARKERS = ('_METADATA', '_CHECKPOINT_METADATA', 'manifest.ocdbt')


def step_from_dir_name(name: str) -> Optional[int]:
  """The step of a step directory name: `<N>` (ours) or `checkpoint_<N>` (T5X)."""
  if name.isdigit():
    return int(name)
  m = _T5X_STEP_DIR.fullmatch(name)
  return int(m.group(1)) if m else None


def _t5x_checkpoint_file(path: str) -> Optional[str]:
  """T5X's legacy msgpack file: `checkpoint_N/checkpoint` or `checkpoint_N/state/checkpoint`
  (the latter only when `state` is not an Orbax item)."""
  if os.path.isfile(os.path.join(path, 'checkpoint')):
    return os.path.join(path, 'checkpoint')
  state = os.path.join(path, 'state')
  if os.path.isfile(os.path.join(state, 'checkpoint')) and not any(
      os.path.exists(os.path.join(state, m)) for m in _ORBAX_MARKERS):
    return os.path.join(state, 'checkpoint')
  return None


def _is_step_dir(path: str) -> bool:
  """Holds a checkpoint: an Orbax `state` item (ours or T5X's) or a T5X msgpack file."""
  return os.path.isdir(os.path.join(path, 'state')) or _t5x_checkpoint_file(path) is not None


def find_step_dir(path: str) -> Optional[str]:
  """The step directory `read_params` reads for `path`: `path` itself when it is
  one, else the latest `<N>` / `checkpoint_<N>` step directory in
  `path/checkpoints` (our run directory) or `path` (our checkpoints directory, a
  T5X model directory); None if there is none."""
  path = os.path.abspath(os.path.expanduser(path))
  if _is_step_dir(path):
    return path
  for root in (os.path.join(path, 'checkpoints'), path):
    if os.path.isdir(root):
      steps = {}
      for d in os.listdir(root):
        step = step_from_dir_name(d)
        if step is not None and _is_step_dir(os.path.join(root, d)):
          steps.setdefault(step, os.path.join(root, d))
      if steps:
        return steps[max(steps)]
  return None


def read_step_params(step_dir: str) -> dict[str, Any]:
  """Parameters of one step directory: ours (Orbax `state/params`), T5X's Orbax
  (`state/target`) or T5X's legacy msgpack + tensorstore (`target`)."""
  if _t5x_checkpoint_file(step_dir) is not None:
    return load_t5x_checkpoint(step_dir)['target']
  state = read_orbax_state(step_dir)
  for key in ('params', 'target'):
    if key in state:
      return state[key]
  raise ValueError(f'{step_dir}/state: no parameters under params/ (distill-sbs) or '
                   f'target/ (T5X); keys: {sorted(state)}')


def t5x_checkpoint_dir(path: str, step: Optional[int] = None) -> str:
  """`path` if it is a T5X `checkpoint_<step>` directory, else the one for
  `step` (default: the latest) inside the T5X model directory `path`."""
  path = os.path.abspath(os.path.expanduser(path))
  if _is_step_dir(path):
    return path
  if not os.path.isdir(path):
    raise FileNotFoundError(f'T5X checkpoint path {path!r} is not a directory')
  steps = sorted(int(m.group(1)) for d in os.listdir(path)
                 if (m := _T5X_STEP_DIR.fullmatch(d)) and _is_step_dir(os.path.join(path, d)))
  if not steps:
    raise FileNotFoundError(f'{path!r} holds no T5X checkpoint_<step> directory')
  if step is None:
    step = steps[-1]
  if step not in steps:
    raise FileNotFoundError(f'{path!r} has no checkpoint_{step} (steps: {steps})')
  return os.path.join(path, f'checkpoint_{step}')


def read_t5x_params(path: str, step: Optional[int] = None) -> dict[str, Any]:
  """Parameters of a T5X checkpoint (Orbax or legacy): a `checkpoint_<step>`
  directory, or the model directory holding them (`step`, default latest)."""
  return read_step_params(t5x_checkpoint_dir(path, step))


def read_params(path: str) -> dict[str, Any]:
  """Parameters (nested dict of numpy arrays) from any supported format: a
  Hugging Face directory, our run / checkpoints / step directory, or a T5X
  model / `checkpoint_<N>` directory (Orbax or legacy)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'INITIAL_CHECKPOINT_PATH {path!r} is not a directory')
  if _is_hf_dir(path):
    _, params = hf_io.load_hf_checkpoint(path)
    return params
  step_dir = find_step_dir(path)
  if step_dir is not None:
    return read_step_params(step_dir)
  raise ValueError(f'INITIAL_CHECKPOINT_PATH {path!r}: not a Hugging Face directory '
                   '(config.json + *.safetensors), a T5X model or checkpoint_<N> '
                   "directory (Orbax 'state' item or msgpack 'checkpoint' file) or a "
                   'distill-sbs run / checkpoint directory')


def read_orbax_state(step_dir: str) -> dict[str, Any]:
  """A saved `state` item as host numpy arrays (independent of its mesh)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckptr = ocp.PyTreeCheckpointer()
  state_dir = os.path.join(step_dir, 'state')
  meta = ckptr.metadata(state_dir)
  tree = meta.item_metadata.tree if hasattr(meta, 'item_metadata') else meta
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def load_params(path: str, abstract_params: Any, shardings: Any,
                assignment_map: Optional[AssignmentMap] = None) -> Any:
  """All parameters from `path`, placed in `shardings` (eval / infer)."""
  flat, _ = assign_params(abstract_params, read_params(path), assignment_map, strict=True)
  flat_sh = traverse_util.flatten_dict(shardings)
  out = {}
  for key in traverse_util.flatten_dict(abstract_params):
    val = flat['/'.join(key)]
    if val is None:
      raise ValueError(f'load_params: parameter {"/".join(key)!r} was mapped to None')
    out[key] = jax.make_array_from_callback(val.shape, flat_sh[key],
                                            lambda idx, v=val: v[idx])
  return traverse_util.unflatten_dict(out)


def assign_params(target: Mapping[str, Any], source: Mapping[str, Any],
                  assignment_map: Optional[AssignmentMap] = None,
                  strict: bool = True) -> tuple[dict[str, Any], list[str]]:
  """Builds target-shaped params from `source` (T5X's `assignment_map`).

  Args:
    target: nested dict of the run's (abstract or concrete) parameters.
    source: nested dict of checkpoint parameters.
    assignment_map: (regex on the target path 'a/b/c', source path
      replacement or None). The first matching rule wins; None keeps the
      target's initial value (partial loads). Unmatched paths load from the
      same path.
    strict: raise when a target path is missing from `source` (and not mapped
      to None) or shapes differ.

  Returns:
    (flat dict path → array or None (keep initial), list of loaded paths).
  """
  source = match_layer_layout(source, target)
  flat_t = {'/'.join(k): v for k, v in traverse_util.flatten_dict(dict(target)).items()}
  flat_s = {'/'.join(k): v for k, v in traverse_util.flatten_dict(dict(source)).items()}
  out, loaded = {}, []
  for path, tval in flat_t.items():
    src = path
    for pattern, repl in assignment_map or ():
      if re.fullmatch(pattern, path):
        src = None if repl is None else re.sub(pattern, repl, path)
        break
    if src is None:
      out[path] = None
      continue
    if src not in flat_s:
      if strict:
        raise KeyError(f'initial checkpoint has no parameter {src!r} (for {path!r}); '
                       'map it with an assignment_map rule (regex, None) to keep its '
                       'initial value')
      out[path] = None
      continue
    arr = np.asarray(flat_s[src])
    if tuple(arr.shape) != tuple(tval.shape):
      raise ValueError(f'initial checkpoint parameter {src!r} has shape {arr.shape}, '
                       f'the model expects {tuple(tval.shape)} for {path!r}')
    out[path] = arr.astype(tval.dtype)
    loaded.append(path)
  return out, loaded


def _scanned(tree: Mapping[str, Any]) -> Optional[bool]:
  """True: stacked `layers` (scan_layers); False: `layers_{i}`; None: neither."""
  for sub in tree.values():
    if isinstance(sub, Mapping):
      if 'layers' in sub:
        return True
      if any(re.fullmatch(r'layers_\d+', k) for k in sub):
        return False
  return None


def match_layer_layout(source: Mapping[str, Any], target: Mapping[str, Any]
                       ) -> Mapping[str, Any]:
  """`source` in the layer layout of `target` (T5 `scan_layers` stacked
  'layers' vs per-layer 'layers_{i}'), so either checkpoint loads into either
  model."""
  want, have = _scanned(target), _scanned(source)
  if want is None or have is None or want == have:
    return source
  source = {k: np.asarray(v) if not isinstance(v, Mapping) else v
            for k, v in dict(source).items()}
  return network.scan_layer_params(source) if want else network.unscan_layer_params(source)


def load_initial_params(path: str, params: Any, shardings: Any,
                        assignment_map: Optional[AssignmentMap] = None,
                        strict: bool = True) -> Any:
  """`params` (initialised, sharded) with values from the checkpoint at `path`."""
  source = read_params(path)
  flat, _ = assign_params(params, source, assignment_map, strict)
  flat_p = traverse_util.flatten_dict(params)
  flat_sh = traverse_util.flatten_dict(shardings)
  new = {}
  for key, cur in flat_p.items():
    val = flat['/'.join(key)]
    if val is None:
      new[key] = cur
    else:
      new[key] = jax.make_array_from_callback(val.shape, flat_sh[key],
                                              lambda idx, v=val: v[idx])
  return traverse_util.unflatten_dict(new)


# ----------------------------------------------------------------------------
# T5X legacy checkpoints (msgpack + tensorstore).
# ----------------------------------------------------------------------------
def _is_ts_spec(x: Any) -> bool:
  return isinstance(x, dict) and {'driver', 'kvstore'} <= set(x)


def load_t5x_checkpoint(path: str) -> dict[str, Any]:
  """Reads a T5X `checkpoint_<step>` directory into nested numpy dicts.

  The msgpack `checkpoint` file holds {'version', 'optimizer': state dict};
  partitioned arrays are replaced by tensorstore specs whose kvstore paths are
  relative to the checkpoint directory. Returns the state dict, e.g.
  {'target': params, 'state': {'step': ..., 'param_states': ...}}.
  """
  from flax import serialization  # pylint: disable=g-import-not-at-top
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  ckpt = _t5x_checkpoint_file(path)
  if ckpt is None:
    raise FileNotFoundError(f'{path!r} has no T5X msgpack checkpoint file')
  path = os.path.dirname(ckpt)
  with open(ckpt, 'rb') as f:
    state = serialization.msgpack_restore(f.read())

  def load(leaf):
    if not _is_ts_spec(leaf):
      return np.asarray(leaf) if isinstance(leaf, (np.ndarray, np.generic, int, float)) \
          else leaf
    spec = dict(leaf)
    kv = dict(spec['kvstore'])
    if kv.get('driver') in ('gcs', 'gfile', 'file'):
      rel = kv.get('path', spec.pop('path', ''))
      kv = {'driver': 'file', 'path': rel if os.path.isabs(rel) else os.path.join(path, rel)}
    spec['kvstore'] = kv
    spec.pop('path', None)
    return np.asarray(ts.open(spec, open=True).result().read().result())
  out = jax.tree.map(load, state, is_leaf=_is_ts_spec)
  if 'optimizer' in out and 'target' not in out:  # older flax.optim layout
    out = out['optimizer']
  if 'target' not in out:
    raise ValueError(f'{ckpt}: no parameters under target/ (keys: {sorted(out)})')
  return out


T5X_LEGACY_VERSION = 3  # t5x.checkpoints.VERSION


def write_t5x_checkpoint(path: str, params: Mapping[str, Any], step: int = 0,
                         tensorstore_min_size: Optional[int] = 0) -> None:
  """Writes `params` as T5X's legacy checkpoint directory `path` (`checkpoint_<step>`).

  The msgpack `checkpoint` file holds `{'version': 3, 'optimizer': {'target':
  params, 'state': {'step': step}}}` as `t5x.checkpoints.Checkpointer` writes it
  (no optimizer state: T5X initialises it afresh, see docs/t5x.md). Arrays with
  at least `tensorstore_min_size` elements (ndim > 0) go to zarr stores
  `path/target.<a>.<b>` referenced by tensorstore specs with kvstore paths
  relative to `path`, as T5X writes partitioned arrays; the rest, and all of
  them when `tensorstore_min_size` is None, are stored inline.
  """
  from flax import serialization  # pylint: disable=g-import-not-at-top
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  flat = traverse_util.flatten_dict({'target': dict(params)})
  out = {}
  for key, arr in flat.items():
    arr = np.asarray(arr)
    if tensorstore_min_size is not None and arr.ndim > 0 and arr.size >= tensorstore_min_size:
      rel = '.'.join(key)
      spec = {'driver': 'zarr', 'dtype': arr.dtype.name,
              'kvstore': {'driver': 'file', 'path': rel},
              'metadata': {'shape': list(arr.shape), 'chunks': list(arr.shape),
                           'compressor': {'id': 'gzip'}}}
      abs_spec = dict(spec, kvstore={'driver': 'file', 'path': os.path.join(path, rel)})
      store = ts.open(abs_spec, create=True, delete_existing=True).result()
      store.write(arr).result()
      out[key] = spec
    else:
      out[key] = arr
  state = traverse_util.unflatten_dict(out)
  state['state'] = {'step': np.asarray(step, np.int32)}
  tmp = os.path.join(path, 'checkpoint.tmp')
  with open(tmp, 'wb') as f:
    f.write(serialization.msgpack_serialize({'version': T5X_LEGACY_VERSION,
                                             'optimizer': state}))
  os.replace(tmp, os.path.join(path, 'checkpoint'))
