"""Boxed (`nn.with_logical_partitioning`) variables → T5X's `params_axes` layout.

The project's network creates parameters as `nn.LogicallyPartitioned` boxes;
T5X's train state expects plain arrays plus a `params_axes` collection of
`flax.linen.partitioning.AxisMetadata` (the `param_with_axes` convention),
keyed `<name>_axes`. The parameter tree itself (names, shapes) is unchanged, so
checkpoints of either trainer hold the same tree.
"""
from __future__ import annotations

from typing import Any, Mapping

from flax import traverse_util
from flax.core import meta
from flax.linen import partitioning as flax_partitioning

AXES_SUFFIX = '_axes'


def axis_metadata(variables: Mapping[str, Any], collection: str = 'params'
                  ) -> dict[str, Any]:
  """`{..., name + '_axes': AxisMetadata(names)}` for every leaf of `collection`.

  Raises:
    ValueError: a leaf is not boxed with logical axis names (T5X would fail
      later with "Missing axis names for parameters").
  """
  flat = traverse_util.flatten_dict(_to_dict(variables[collection]))
  out = {}
  for path, leaf in flat.items():
    if not isinstance(leaf, meta.Partitioned):
      raise ValueError(f'{collection}/{"/".join(path)}: parameter has no logical axis '
                       'names; create it with nn.with_logical_partitioning')
    names = tuple(leaf.names)
    if len(names) != leaf.value.ndim:
      raise ValueError(f'{collection}/{"/".join(path)}: {len(names)} axis names '
                       f'{names} for a rank-{leaf.value.ndim} parameter')
    out[path[:-1] + (path[-1] + AXES_SUFFIX,)] = flax_partitioning.AxisMetadata(names=names)
  return traverse_util.unflatten_dict(out)


def unbox_with_axes(variables: Mapping[str, Any]) -> dict[str, Any]:
  """Unboxed collections plus `<collection>_axes` for each boxed collection."""
  out = {}
  for name, tree in _to_dict(variables).items():
    out[name] = meta.unbox(tree)
    leaves = traverse_util.flatten_dict(_to_dict(tree)).values()
    if any(isinstance(v, meta.Partitioned) for v in leaves):
      out[name + AXES_SUFFIX] = axis_metadata(variables, name)
  return out


def _to_dict(tree: Any) -> Any:
  if hasattr(tree, 'unfreeze'):
    return tree.unfreeze()
  if isinstance(tree, Mapping):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree
