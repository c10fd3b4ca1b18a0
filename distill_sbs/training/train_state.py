"""`TrainState` (step, params, optimizer state) and its shardings."""
from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh

from distill_sbs.training import partitioning


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds about the model (fp32 parameters)."""
  step: jax.Array
  params: Any
  opt_state: Any


def _init_fn(model, input_shapes: Mapping[str, tuple]):
  def init(rng: jax.Array):
    variables = model.get_initial_variables(rng, input_shapes)
    boxed = variables['params']
    params = nn.meta.unbox(boxed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=model.optimizer_def.init(params)), boxed
  return init


def state_shardings(model, input_shapes: Mapping[str, tuple], mesh: Mesh,
                    rules: partitioning.LogicalAxisRules) -> tuple[TrainState, TrainState]:
  """(abstract state, state shardings) computed without allocating parameters.
  A model with `validate_mesh(mesh, rules)` checks the mesh first (decoder-only:
  heads against the model-parallel size)."""
  validate = getattr(model, 'validate_mesh', None)
  if validate is not None:
    validate(mesh, rules)
  abstract, boxed = jax.eval_shape(_init_fn(model, input_shapes), jax.random.PRNGKey(0))
  param_sh = partitioning.logical_to_shardings(boxed, mesh, rules)
  opt_sh = partitioning.opt_state_shardings(model.optimizer_def, abstract.params, param_sh,
                                            abstract.opt_state, mesh)
  shardings = TrainState(step=partitioning.replicated(mesh), params=param_sh,
                         opt_state=opt_sh)
  return abstract, shardings


def init_state(model, input_shapes: Mapping[str, tuple], mesh: Mesh,
               rules: partitioning.LogicalAxisRules, seed: int,
               shardings: TrainState) -> TrainState:
  """Freshly initialised state, created directly in its shardings."""
  init = _init_fn(model, input_shapes)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    fn = jax.jit(lambda rng: init(rng)[0], out_shardings=shardings)
    return fn(jax.random.PRNGKey(seed))


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying target shardings (for restoring)."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
