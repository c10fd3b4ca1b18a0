"""One process of the multi-process test: 2 processes × 4 CPU devices.

usage: mp_worker.py PROCESS_ID PORT OUT_NPZ
"""
import sys

import jax
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

import train_helpers as helpers
from distill_sbs.training import partitioning
from distill_sbs.training import trainer as trainer_lib

SMALL = dict(emb_dim=32, num_heads=4, head_dim=8, num_encoder_layers=1,
             num_decoder_layers=1, mlp_dim=64)


def train(batches, mesh_shape=(8, 1)):
  model = helpers.tiny_model(**SMALL)
  mesh = partitioning.create_mesh(partitioning.MeshConfig(mesh_shape=mesh_shape))
  shapes = helpers.input_shapes(batches[0])
  tr = trainer_lib.Trainer(model, mesh, partitioning.standard_logical_axis_rules(), shapes)
  state = tr.init_state()
  n, i = jax.process_count(), jax.process_index()
  losses = []
  for b in batches:
    rows = b['encoder_input_tokens'].shape[0] // n
    local = {k: v[i * rows:(i + 1) * rows] for k, v in b.items()}  # this process's rows
    state, metrics = tr.train_step(state, tr.shard_batch(local))
    losses.append(float(metrics['loss']))
  params = multihost_utils.process_allgather(state.params, tiled=True)
  flat = {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  return losses, flat


def main(pid, port, out):
  partitioning.initialize_distributed(f'127.0.0.1:{port}', num_processes=2,
                                      process_id=pid, cpu_collectives='gloo')
  assert jax.process_count() == 2 and jax.local_device_count() == 4
  losses, flat = train(helpers.synthetic_batches(3, batch=8, seed=1))
  if pid == 0:
    np.savez(out, losses=np.asarray(losses), **flat)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
