"""Tiny models and synthetic batches shared by the training tests."""
from __future__ import annotations

import contextlib
import os
import pathlib
import socket

import numpy as np
import seqio

from distill_sbs import models
from distill_sbs.distill import losses
from distill_sbs.training import model as model_lib
from distill_sbs.training import optimizers

TINY = dict(vocab_size=384, dtype='float32', emb_dim=64, num_heads=4, head_dim=16,
            num_encoder_layers=2, num_decoder_layers=2, mlp_dim=128)


def tiny_model(optimizer=None, **overrides) -> model_lib.EncoderDecoderModel:
  cfg = models.T5Config(**{**TINY, **overrides})
  vocab = seqio.ByteVocabulary(extra_ids=100)
  return model_lib.EncoderDecoderModel(
      module=models.Transformer(cfg), input_vocabulary=vocab, output_vocabulary=vocab,
      optimizer_def=optimizer or optimizers.adafactor(optimizers.constant(0.01)),
      loss_fn=losses.CrossEntropyLoss(z_loss=1e-4))


def synthetic_batches(num: int, batch: int = 8, inp_len: int = 12, tgt_len: int = 6,
                      seed: int = 0, vocab: int = 300) -> list[dict[str, np.ndarray]]:
  """Deterministic random enc-dec batches with some padding."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    enc = rng.integers(3, vocab, size=(batch, inp_len)).astype(np.int32)
    tgt = rng.integers(3, vocab, size=(batch, tgt_len)).astype(np.int32)
    enc[:, -2:] = 0
    tgt[::2, -1] = 0
    dec_in = np.pad(tgt, ((0, 0), (1, 0)))[:, :-1]
    out.append({'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
                'decoder_input_tokens': dec_in,
                'decoder_loss_weights': (tgt > 0).astype(np.float32)})
  return out


def input_shapes(batch: dict[str, np.ndarray]) -> dict[str, tuple]:
  return {k: v.shape for k, v in batch.items()}


# A model gin equivalent to t5x_configs/models/t5_1_1/tiny.gin (1+1 layers to
# keep compile times low) for subprocess runs.
MODEL_GIN = """
from __gin__ import dynamic_registration
import seqio
from distill_sbs import models
from distill_sbs.distill import losses
from distill_sbs.training import model as training_model
from distill_sbs.training import optimizers
DROPOUT_RATE = 0.0
VOCABULARY = @seqio.ByteVocabulary()
seqio.ByteVocabulary.extra_ids = 100
OPTIMIZER = @optimizers.adafactor()
optimizers.adafactor.learning_rate = @optimizers.constant()
optimizers.constant.value = 0.01
LOSS_FN = @losses.CrossEntropyLoss()
losses.CrossEntropyLoss.z_loss = 1e-4
MODEL = @training_model.EncoderDecoderModel()
training_model.EncoderDecoderModel:
  module = @models.Transformer()
  input_vocabulary = %VOCABULARY
  output_vocabulary = %VOCABULARY
  optimizer_def = %OPTIMIZER
  loss_fn = %LOSS_FN
models.Transformer.config = @models.T5Config()
models.T5Config:
  vocab_size = 384
  dtype = 'float32'
  emb_dim = 32
  num_heads = 2
  head_dim = 16
  num_encoder_layers = 1
  num_decoder_layers = 1
  mlp_dim = 64
  dropout_rate = %DROPOUT_RATE
"""

RUN_GIN = """
include 't5x_configs/runs/finetune.gin'
from distill_sbs.training import input_pipeline
from distill_sbs.training import evaluation
MIXTURE_OR_TASK_NAME = 'test_cqa_32'
TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 24}
BATCH_SIZE = 8
DROPOUT_RATE = 0.0
LEARNING_RATE = 0.01
train/input_pipeline.DatasetConfig.module = 'tiny_tasks'
validation/input_pipeline.DatasetConfig.module = 'tiny_tasks'
evaluation.EvalConfig.module = 'tiny_tasks'
"""


REPO = pathlib.Path(__file__).resolve().parents[2]


def cli_env(keep_xla_flags: bool = False) -> dict[str, str]:
  """Environment of a `python -m distill_sbs...` subprocess in a test: these
  helpers and the repo importable, CPU JAX, quiet TF; the test's 8 forced host
  devices only with `keep_xla_flags`."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(REPO / 'tests' / 'training'), str(REPO),
                                       env.get('PYTHONPATH', '')])
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  if not keep_xla_flags:
    env.pop('XLA_FLAGS', None)
  return env


def free_port() -> int:
  """A free localhost port (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def fresh_gin():
  """An empty, unlocked gin config for the block, cleared after it."""
  import gin  # pylint: disable=g-import-not-at-top
  with gin.unlock_config():
    gin.clear_config()
    try:
      yield
    finally:
      gin.clear_config()
