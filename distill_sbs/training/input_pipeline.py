"""SeqIO datasets for training / evaluation, per process, with a resumable position.

Each process reads its own shard (`seqio.ShardInfo(process_index, process_count)`)
and yields `global_batch / process_count` rows; `make_global_batch` assembles
the global batch. The iterator position is the number of batches consumed:
the dataset is deterministic (seeded shuffle), so a resumed run skips exactly
the batches the interrupted run had used.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Iterator, Mapping, Optional

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from distill_sbs.data import feature_converters


@gin.configurable(module='distill_sbs.training.input_pipeline')
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """Which data a run reads (T5X's `DatasetConfig`).

  `batch_size` is global (all processes). `module` is imported first so its
  SeqIO registrations exist (default `distill_sbs.tasks`).
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = 'train'
  batch_size: int = 32
  shuffle: bool = True
  seed: Optional[int] = 0
  use_cached: bool = False
  pack: bool = False
  module: Optional[str] = 'distill_sbs.tasks'
  feature_converter_cls: Optional[Any] = None  # None → the model's converter


def import_task_module(module: Optional[str]) -> None:
  if module:
    importlib.import_module(module)


def converter_class(cls: Optional[Any], model: Any) -> Any:
  """The converter class a run uses: `cls` (a method's binding, may be None)
  through the model's `converter_for` when it has one (decoder-only models map
  encoder-decoder converters to theirs), else `cls`, the model's
  FEATURE_CONVERTER_CLS, or seqio's EncDec with best-fit packing."""
  mapper = getattr(model, 'converter_for', None)
  if mapper is not None:
    return mapper(cls)
  return (cls or getattr(model, 'FEATURE_CONVERTER_CLS', None)
          or feature_converters.EncDecFeatureConverter)


def encoder_block_length(model: Any) -> int:
  """The model's `encoder_block_length` (0: none, or no such field)."""
  return int(getattr(getattr(model, 'config', None), 'encoder_block_length', 0) or 0)


def check_encoder_blocks(batch: Mapping[str, Any], block: int) -> None:
  """Raises when a packed encoder segment crosses a `block`-token boundary
  (attention per block would cut it; `T5Config.encoder_block_length`)."""
  seg = batch.get('encoder_segment_ids')
  if not block or seg is None or np.shape(seg)[1] <= block:
    return
  seg = np.asarray(seg)  # [batch, length]
  left, right = seg[:, block - 1:-1:block], seg[:, block::block]  # [batch, blocks - 1]
  bad = np.argwhere((left == right) & (right > 0))
  if len(bad):
    r, j = bad[0]
    raise ValueError(
        f'encoder segment {int(right[r, j])} of batch row {int(r)} crosses the block '
        f'boundary at position {(int(j) + 1) * block} (T5Config.encoder_block_length='
        f'{block}): pack with the same block length (the input pipeline does), or set '
        f'encoder_block_length = 0')


def feature_converter(cfg: DatasetConfig, model: Any) -> seqio.FeatureConverter:
  """The run's converter; packed rows keep the encoder blocks the model
  attends within (`T5Config.encoder_block_length`)."""
  cls = converter_class(cfg.feature_converter_cls, model)
  block = encoder_block_length(model)
  inputs = int((cfg.task_feature_lengths or {}).get('inputs') or 0)
  if not (cfg.pack and block) or inputs <= block:  # rows of one block: whole rows
    return cls(pack=cfg.pack)
  if inputs % block:
    raise ValueError(
        f'T5Config.encoder_block_length={block} (ENCODER_BLOCK_LENGTH; the step-by-step '
        f"methods take the dataset's PAIRED_ENCODER_BLOCK_LENGTH) does not divide the packed "
        f"inputs length {inputs} (TASK_FEATURE_LENGTHS['inputs'] of "
        f'{cfg.mixture_or_task_name}); set it to a divisor, or 0 for whole rows')
  try:
    return cls(pack=True, encoder_block_length=block)
  except TypeError as e:
    raise ValueError(
        f'T5Config.encoder_block_length={block} needs a converter that packs in '
        f'blocks (data.feature_converters.EncDecFeatureConverter and its subclasses); '
        f'{getattr(cls, "__name__", cls)} does not: {e}') from e


def get_dataset(cfg: DatasetConfig, model: Any, *, num_epochs: Optional[int] = None,
                shard_info: Optional[seqio.ShardInfo] = None,
                drop_remainder: bool = True) -> tf.data.Dataset:
  """Model-feature batches of this process's rows (repeated when num_epochs=None)."""
  import_task_module(cfg.module)
  if shard_info is None:
    shard_info = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
  if cfg.batch_size % shard_info.num_shards:
    raise ValueError(f'DatasetConfig.batch_size={cfg.batch_size} is not divisible by '
                     f'the {shard_info.num_shards} data shards (processes)')
  local_batch = cfg.batch_size // shard_info.num_shards
  converter = feature_converter(cfg, model)
  ds = seqio.get_dataset(
      cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
      feature_converter=converter, dataset_split=cfg.split,
      use_cached=cfg.use_cached, shuffle=cfg.shuffle, num_epochs=num_epochs,
      shard_info=shard_info, verbose=False, seed=cfg.seed, batch_size=None)
  ds = ds.map(functools.partial(_static_lengths,
                                lengths=model_feature_lengths(converter, cfg)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local_batch, drop_remainder=drop_remainder)


def model_feature_lengths(converter: seqio.FeatureConverter, cfg: DatasetConfig
                          ) -> dict[str, int]:
  """Per-feature lengths: the converter's, else encoder_* → inputs and
  decoder_* → targets lengths."""
  lengths = dict(cfg.task_feature_lengths)
  try:
    out = dict(converter.get_model_feature_lengths(lengths))
  except Exception:  # pylint: disable=broad-except
    out = {}
  out.setdefault('_encoder', lengths.get('inputs'))
  out.setdefault('_decoder', lengths.get('targets'))
  return out


def _static_lengths(ex: Mapping[str, tf.Tensor], lengths: Mapping[str, int]
                    ) -> dict[str, tf.Tensor]:
  """Pads / trims dynamic leading dims so batches have static shapes."""
  out = {}
  for k, v in ex.items():
    if v.shape.rank and v.shape[0] is None:
      n = lengths.get(k) or lengths['_encoder' if k.startswith('encoder') else '_decoder']
      if n is None:
        raise ValueError(f'feature {k!r} has no known length; add it to '
                         'TASK_FEATURE_LENGTHS')
      v = v[:n]
      pad = [[0, n - tf.shape(v)[0]]] + [[0, 0]] * (v.shape.rank - 1)
      v = tf.pad(v, pad)
      v = tf.ensure_shape(v, [n] + v.shape.as_list()[1:])
    out[k] = v
  return out


class BatchIterator:
  """Numpy batches of a (repeating) dataset; `position` = batches consumed."""

  def __init__(self, ds: tf.data.Dataset, position: int = 0):
    self._ds = ds
    self.position = int(position)
    self._it: Optional[Iterator[Mapping[str, np.ndarray]]] = None

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._it = iter(self._ds.skip(self.position).as_numpy_iterator())
    batch = next(self._it)
    self.position += 1
    return dict(batch)

  def get_state(self) -> dict[str, int]:
    return {'position': self.position}


def global_input_shapes(ds: tf.data.Dataset) -> dict[str, tuple]:
  """Per-feature global shapes from a process-local batched dataset."""
  shapes = {}
  for k, spec in ds.element_spec.items():
    shape = tuple(spec.shape)
    if any(d is None for d in shape):
      raise ValueError(f'feature {k!r} has a dynamic shape {shape}; batches must '
                       'have static shapes (drop_remainder=True)')
    shapes[k] = (shape[0] * jax.process_count(),) + shape[1:]
  return shapes
