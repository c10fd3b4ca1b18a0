"""Mesh construction and T5X's logical axis rules."""
from typing import Optional, Sequence

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
             ('mlp', 'model'), ('heads', 'model'), ('kv', None),
             ('joined_kv', 'model')]
  elif dims == (2, 1):
    rules = [('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'),
             ('heads', 'model'), ('kv', None), ('joined_kv', 'model'),
             ('embed', 'model')]
  elif dims == (1, 2):
    rules = [('batch', 'data'), ('vocab', 'model'), ('embed', 'data'),
             ('mlp', 'model'), ('heads', 'model'), ('kv', None),
             ('joined_kv', 'model')]
  elif dims == (2, 2):
    rules = [('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'),
             ('heads', 'model'), ('kv', None), ('joined_kv', 'model'),
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
