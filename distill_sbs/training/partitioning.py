"""Mesh construction, T5X's logical axis rules, shardings, multi-host batches."""
import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LogicalAxisRules = Sequence[tuple[str, Optional[str]]]


def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1,
    parameter_partitioning_dims: int = 1,
    additional_rules: Optional[LogicalAxisRules] = None,
) -> list[tuple[str, Optional[str]]]:
  """T5X's standard rules: batch→data; vocab, mlp, heads, joined_kv→model."""
  dims = (activation_partitioning_dims, parameter_partitioning_dims)
  if dims == (1, 1):
    rules = [('batch', 'data'), ('vocab', 'model'), ('embed', None),
             ('mlp', 'model'), ('heads', 'model'), ('kv', None), ('layers', None),
             ('joined_kv', 'model')]
  elif dims == (2, 1):
    rules = [('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'),
             ('heads', 'model'), ('kv', None), ('layers', None), ('joined_kv', 'model'),
             ('embed', 'model')]
  elif dims == (1, 2):
    rules = [('batch', 'data'), ('vocab', 'model'), ('embed', 'data'),
             ('mlp', 'model'), ('heads', 'model'), ('kv', None), ('layers', None),
             ('joined_kv', 'model')]
  elif dims == (2, 2):
    rules = [('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'),
             ('heads', 'model'), ('kv', None), ('layers', None), ('joined_kv', 'model'),
             ('embed', 'model'), ('embed', 'data')]
  else:
    raise ValueError(
        f'Unsupported partitioning dims: activation={activation_partitioning_dims}, '
        f'parameter={parameter_partitioning_dims} (each must be 1 or 2).')
  rules.extend([('relpos_buckets', None), ('abspos_buckets', None),
                ('length', None), ('layers', None), ('stack', None),
                ('mlp_activations', None)])
  if additional_rules:
    rules.extend(additional_rules)
  return rules


# ----------------------------------------------------------------------------
# Mesh, shardings and multi-host batches.
# ----------------------------------------------------------------------------
DATA_AXIS = 'data'
MODEL_AXIS = 'model'


@gin.configurable(module='distill_sbs.training.partitioning')
def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Sequence[int]] = None,
                           cpu_collectives: Optional[str] = None) -> None:
  """`jax.distributed.initialize` when a coordinator is configured (multi-host).

  On TPU pods / SLURM all arguments may be left to auto-detection by setting
  only `coordinator_address='auto'`. `cpu_collectives='gloo'` enables
  cross-process collectives on CPU (tests, CPU clusters).
  """
  if coordinator_address is None:
    return
  if cpu_collectives:
    jax.config.update('jax_cpu_collectives_implementation', cpu_collectives)
  if coordinator_address == 'auto':
    jax.distributed.initialize()
    return
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)


@gin.configurable(module='distill_sbs.training.partitioning')
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """How to lay devices out on the ('data', 'model') mesh.

  Give either `mesh_shape=(data, model)` explicitly, or `num_partitions`
  (model-parallel degree; data = devices / num_partitions), or
  `model_parallel_submesh` (T5X's (x, y, z, core) block; its product is the
  model-parallel degree).
  """
  num_partitions: int = 1
  model_parallel_submesh: Optional[tuple[int, ...]] = None
  mesh_shape: Optional[tuple[int, int]] = None
  activation_partitioning_dims: int = 1
  parameter_partitioning_dims: int = 1

  def model_parallelism(self) -> int:
    if self.mesh_shape is not None:
      return int(self.mesh_shape[1])
    if self.model_parallel_submesh is not None:
      return int(math.prod(self.model_parallel_submesh))
    return int(self.num_partitions)

  def logical_axis_rules(self) -> list[tuple[str, Optional[str]]]:
    return standard_logical_axis_rules(self.activation_partitioning_dims,
                                       self.parameter_partitioning_dims)


def create_mesh(config: Optional[MeshConfig] = None,
                devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 2-D ('data', 'model') mesh over all (global) devices."""
  config = config or MeshConfig()
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  model = config.model_parallelism()
  if config.mesh_shape is not None:
    data, model = (int(d) for d in config.mesh_shape)
  else:
    if model <= 0 or n % model:
      raise ValueError(f'MeshConfig: {n} devices are not divisible by a '
                       f'model-parallel degree of {model}')
    data = n // model
  if data * model != n:
    raise ValueError(f'MeshConfig.mesh_shape={config.mesh_shape} needs {data * model} '
                     f'devices, found {n}')
  # Devices are ordered by process so each process owns a contiguous block of
  # the data axis (its rows of the global batch).
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices, dtype=object).reshape(data, model),
              (DATA_AXIS, MODEL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batches: leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


class ShardingError(ValueError):
  """A parameter's sharding cannot be built as the rules say."""


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
                  for k in path)


@gin.configurable(module='distill_sbs.training.partitioning')
def logical_to_shardings(boxed_tree: Any, mesh: Mesh, rules: LogicalAxisRules,
                         replicate: Sequence[str] = ()) -> Any:
  """Shardings for a tree of `nn.LogicallyPartitioned` (or plain) leaves.

  Never falls back silently: a logical axis no rule names, or a dimension whose
  size its mesh axes do not divide (e.g. 2 relative-position heads on a 4-way
  model axis), raises `ShardingError` naming the parameter and axis. A rule
  mapping an axis to None replicates it; so does `replicate` (regexes of
  parameter paths, e.g. [r'.*/relpos_bias/.*']) for the dimensions the mesh
  does not divide.
  """
  import re  # pylint: disable=g-import-not-at-top
  known = {name for name, _ in rules}
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, list(rules))
  values = nn.meta.unbox(boxed_tree)
  spec_of = {_path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: isinstance(x, P))[0]}
  allowed = [re.compile(r) for r in replicate]

  def fit(path, sharding, value):
    name = _path_str(path)
    shape = getattr(value, 'shape', None)
    if shape is None or not isinstance(sharding, NamedSharding):
      return sharding
    logical = tuple(spec_of.get(name) or ())
    unknown = [a for a in logical if a is not None and a not in known]
    if unknown:
      raise ShardingError(f'parameter {name}: logical axis {unknown[0]!r} has no rule in '
                          f'the logical axis rules {sorted(known)}; add one (None to '
                          'replicate it)')
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    for i, axes in enumerate(spec):
      if axes is None:
        continue
      names = axes if isinstance(axes, tuple) else (axes,)
      size = math.prod(mesh.shape[a] for a in names)
      if shape[i] % size:
        if any(r.fullmatch(name) for r in allowed):
          spec[i] = None
          continue
        axis = logical[i] if i < len(logical) else None
        raise ShardingError(
            f'parameter {name} {tuple(shape)}: dimension {i} (logical axis {axis!r}) has '
            f'size {shape[i]}, not divisible by mesh axis {"x".join(names)} of size {size}; '
            'change the model or mesh shape, a rule (None replicates the axis), or bind '
            f'partitioning.logical_to_shardings.replicate = [{name!r}]')
    return NamedSharding(mesh, P(*spec))
  return jax.tree_util.tree_map_with_path(
      fit, shardings, values, is_leaf=lambda x: isinstance(x, NamedSharding))


def opt_state_shardings(tx: Any, abstract_params: Any, param_shardings: Any,
                        abstract_opt_state: Any, mesh: Mesh) -> Any:
  """Optimizer state leaves shaped like their parameter share its sharding;
  smaller leaves of a parameter (Adafactor's factored row / column statistics)
  and leaves that are not per parameter (counts) are replicated, by rule. Raises
  `ShardingError` when the state cannot be matched to the parameters."""
  import optax  # pylint: disable=g-import-not-at-top
  rep = replicated(mesh)

  def f(state_leaf, param, sharding):
    if getattr(state_leaf, 'shape', None) == getattr(param, 'shape', ()):
      return sharding
    return rep
  try:
    return optax.tree_map_params(
        tx, f, abstract_opt_state, abstract_params, param_shardings,
        transform_non_params=lambda _: rep)
  except Exception as e:  # pylint: disable=broad-except
    raise ShardingError(
        f'optimizer state shardings: cannot match the state of {type(tx).__name__} to '
        f'the parameters ({type(e).__name__}: {e}); replicating it would cost a full '
        'copy per device') from e


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh
                      ) -> dict[str, jax.Array]:
  """Process-local rows → one global array per feature, sharded on 'data'."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
