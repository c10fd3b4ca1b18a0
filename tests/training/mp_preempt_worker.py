"""One process of the multi-process preemption test (2 processes × 2 CPU devices).

usage: mp_preempt_worker.py PROCESS_ID PORT MODEL_DIR STEPS
"""
import sys

import jax

import train_helpers as helpers
from distill_sbs.training import partitioning
from distill_sbs.training import train_loop


def main(pid, port, model_dir, steps):
  partitioning.initialize_distributed(f'127.0.0.1:{port}', num_processes=2,
                                      process_id=pid, cpu_collectives='gloo')
  batches = [{k: v[pid * 4:(pid + 1) * 4] for k, v in b.items()}
             for b in helpers.synthetic_batches(4, batch=8, seed=1)]
  try:
    train_loop.train(model=helpers.tiny_model(), train_dataset_cfg=None, model_dir=model_dir,
                     total_steps=steps, eval_period=0, checkpoint_period=10_000, log_period=1,
                     async_checkpointing=False, progress_bar=False, train_batches=batches)
  finally:
    jax.distributed.shutdown()


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
