"""`Trainer`: the jitted, mesh-sharded train and evaluation steps."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh

from distill_sbs.training import partitioning
from distill_sbs.training import train_state as ts_lib

Batch = Mapping[str, jax.Array]
# Metrics that are summed over microbatches (and steps) rather than averaged.
SUMMED_METRICS = ('correct_tokens', 'real_tokens', 'weight_sum')
# Per-step flags: 1.0 when the step's loss / gradient norm is finite; and, with
# `skip_nonfinite_updates`, 1.0 on a step whose update was skipped.
FINITE_METRICS = ('loss_finite', 'grad_norm_finite')
SKIPPED_METRIC = 'nonfinite_skipped'


class NonFiniteError(FloatingPointError):
  """A train step produced a non-finite loss or gradient norm."""

  def __init__(self, step: int, metrics: Mapping[str, Any]):
    self.step = int(step)
    bad = [k for k in ('loss', 'grad_norm') if not np.isfinite(float(metrics[k]))]
    self.metrics = bad
    values = ', '.join(f'{k}={float(metrics[k])}' for k in ('loss', 'grad_norm'))
    super().__init__(
        f'non-finite {" and ".join(bad)} at step {self.step} ({values}); stopped '
        'before saving anything from this step (the last good checkpoint is kept). '
        'Lower LEARNING_RATE, or bind train_loop.train.skip_nonfinite_updates=True '
        '(SKIP_NONFINITE_UPDATES) to skip such updates.')


def all_finite(tree: Any) -> jax.Array:
  """Scalar bool: every floating leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def nonfinite_leaves(tree: Any) -> list[str]:
  """Paths ('a/b/c') of floating leaves (host or device arrays) with a NaN / inf."""
  bad = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    x = np.asarray(jax.device_get(x))
    if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
      bad.append('/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path))
  return bad


class Trainer:
  """Builds and runs the sharded train / eval steps for one model and mesh.

  Args:
    model: `training.model.EncoderDecoderModel`.
    mesh: ('data', 'model') mesh.
    rules: logical axis rules.
    input_shapes: feature name -> global shape (for initialisation).
    num_microbatches: gradient accumulation: the batch is split into this many
      microbatches and their gradients averaged (one optimizer update).
    seed: RANDOM_SEED (parameter init and dropout).
    skip_nonfinite_updates: a step whose loss or gradient norm is not finite
      leaves parameters and optimizer state unchanged (the step counter still
      advances) and reports `nonfinite_skipped` = 1.
    donate_state: the train step reuses the incoming state's buffers for the new
      state (T5X's `donate_argnums`), so a step holds one copy of parameters and
      optimizer state. None (default): donate on accelerators, not on CPU, where
      XLA:CPU copies every donated parameter at the start of the step (its copy
      insertion keeps the parameter for the reads before the in-place update):
      ~5% of a T5 mini step (`benchmarks/model_throughput.py`), and host memory
      is not what limits a CPU run. Same numbers either way.
  """

  def __init__(self, model, mesh: Mesh, rules: partitioning.LogicalAxisRules,
               input_shapes: Mapping[str, tuple], *, num_microbatches: int = 1,
               seed: int = 0, skip_nonfinite_updates: bool = False,
               donate_state: Optional[bool] = None):
    self.model = model
    self.mesh = mesh
    self.rules = list(rules)
    self.input_shapes = dict(input_shapes)
    self.num_microbatches = int(num_microbatches or 1)
    batch = next(iter(self.input_shapes.values()))[0]
    if batch % self.num_microbatches:
      raise ValueError(f'batch size {batch} is not divisible by num_microbatches='
                       f'{self.num_microbatches}')
    self.seed = int(seed)
    self.skip_nonfinite_updates = bool(skip_nonfinite_updates)
    self.abstract_state, self.state_shardings = ts_lib.state_shardings(
        model, self.input_shapes, mesh, self.rules)
    self.batch_sharding = partitioning.data_sharding(mesh)
    if donate_state is None:
      donate_state = mesh.devices.flat[0].platform != 'cpu'
    self.donate_state = bool(donate_state)
    self._train_step = jax.jit(self._train_step_fn,
                               in_shardings=(self.state_shardings, self.batch_sharding),
                               out_shardings=(self.state_shardings, None),
                               donate_argnums=(0,) if self.donate_state else ())
    self._eval_step = jax.jit(self._eval_step_fn,
                              in_shardings=(self.state_shardings.params, self.batch_sharding))

  # --------------------------------------------------------------------------
  def init_state(self) -> ts_lib.TrainState:
    return ts_lib.init_state(self.model, self.input_shapes, self.mesh, self.rules,
                             self.seed, self.state_shardings)

  def shard_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Process-local numpy rows → global arrays sharded on 'data'."""
    return partitioning.make_global_batch(local_batch, self.mesh)

  def train_step(self, state: ts_lib.TrainState, batch: Batch
                 ) -> tuple[ts_lib.TrainState, dict[str, jax.Array]]:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self._train_step(state, batch)

  def eval_step(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self._eval_step(params, batch)

  # --------------------------------------------------------------------------
  def _train_step_fn(self, state: ts_lib.TrainState, batch: Batch):
    dropout_rng = jax.random.fold_in(jax.random.PRNGKey(self.seed + 1), state.step)
    grad_fn = jax.value_and_grad(self.model.loss_fn, has_aux=True)
    m = self.num_microbatches
    if m == 1:
      (_, metrics), grads = grad_fn(state.params, batch, dropout_rng)
    else:
      micro = jax.tree.map(
          lambda x: x.reshape((m, x.shape[0] // m) + x.shape[1:]), batch)

      def body(carry, xs):
        i, mb = xs
        (_, mets), g = grad_fn(state.params, mb, jax.random.fold_in(dropout_rng, i))
        acc_g, acc_m = carry
        return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_m, mets)), None
      zeros_g = jax.tree.map(jnp.zeros_like, state.params)
      mb0 = jax.tree.map(lambda x: x[0], micro)
      zeros_m = jax.tree.map(
          jnp.zeros_like, jax.eval_shape(lambda: grad_fn(state.params, mb0, dropout_rng)[0][1]))
      (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), (jnp.arange(m), micro))
      grads = jax.tree.map(lambda g: g / m, grads)
      metrics = {k: (v if k in SUMMED_METRICS else v / m) for k, v in metrics.items()}
    updates, opt_state = self.model.optimizer_def.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + u.astype(p.dtype), state.params, updates)
    metrics = dict(metrics)
    metrics['learning_rate'] = jnp.asarray(
        self.model.optimizer_def.learning_rate(state.step), jnp.float32)
    metrics['grad_norm'] = _global_norm(grads)
    loss_ok = jnp.isfinite(metrics['loss'])
    grad_ok = jnp.isfinite(metrics['grad_norm'])
    metrics['loss_finite'] = loss_ok.astype(jnp.float32)
    metrics['grad_norm_finite'] = grad_ok.astype(jnp.float32)
    if self.skip_nonfinite_updates:
      ok = loss_ok & grad_ok
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
      metrics[SKIPPED_METRIC] = 1.0 - ok.astype(jnp.float32)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step_fn(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
    _, metrics = self.model.loss_fn(params, batch, None)
    return metrics


def _global_norm(tree: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))
