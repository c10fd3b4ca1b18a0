"""Sharding never falls back silently: an indivisible dimension or a logical axis
without a rule raises naming parameter and axis; an explicit choice replicates."""
import jax
import pytest

import train_helpers as helpers
from distill_sbs.training import partitioning
from distill_sbs.training import train_state as ts_lib


def _boxed(**overrides):
  model = helpers.tiny_model(**overrides)
  shapes = helpers.input_shapes(helpers.synthetic_batches(1)[0])
  abstract, boxed = jax.eval_shape(ts_lib._init_fn(model, shapes), jax.random.PRNGKey(0))  # pylint: disable=protected-access
  return model, abstract, boxed


def test_indivisible_dimension_names_parameter_and_axis():
  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=(2, 4)))
  rules = partitioning.standard_logical_axis_rules()
  _, _, boxed = _boxed(num_heads=2)
  with pytest.raises(partitioning.ShardingError,
                     match=r"parameter \S+ \(.*\): dimension \d \(logical axis 'heads'\) has "
                           r'size 2, not divisible by mesh axis model of size 4'):
    partitioning.logical_to_shardings(boxed, mesh, rules)
  # Explicitly allowed: those dimensions are replicated.
  sh = partitioning.logical_to_shardings(boxed, mesh, rules, replicate=[r'.*'])
  rel = sh['encoder']['relpos_bias']['rel_embedding']
  assert rel.spec == jax.sharding.PartitionSpec(None, None)
  # A rule mapping the axis to None replicates it without complaint.
  no_heads = [r for r in rules if r[0] != 'heads'] + [('heads', None)]
  partitioning.logical_to_shardings(boxed, mesh, no_heads)


def test_axis_without_rule_and_unmatched_opt_state_raise():
  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=(4, 2)))
  rules = [r for r in partitioning.standard_logical_axis_rules() if r[0] != 'relpos_buckets']
  model, abstract, boxed = _boxed()
  with pytest.raises(partitioning.ShardingError,
                     match=r"parameter \S*relpos_bias/rel_embedding: logical axis "
                           r"'relpos_buckets' has no rule"):
    partitioning.logical_to_shardings(boxed, mesh, rules)
  sh = partitioning.logical_to_shardings(boxed, mesh, partitioning.standard_logical_axis_rules())
  partitioning.opt_state_shardings(model.optimizer_def, abstract.params, sh, abstract.opt_state,
                                   mesh)
  with pytest.raises(partitioning.ShardingError, match='optimizer state shardings'):
    partitioning.opt_state_shardings(model.optimizer_def, abstract.params, sh,
                                     {'not': 'a state'}, mesh)
