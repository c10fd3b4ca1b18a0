"""Hugging Face `T5ForConditionalGeneration` checkpoints <-> our parameters
(decoder-only Llama / Qwen2 / Qwen3 / Gemma 3 text: `decoder_only_hf`, dispatched
here on `config.json`'s `model_type`).

`load_hf_checkpoint(path) -> (T5Config, params)` reads a local directory with
`config.json` and `model.safetensors` (or `model.safetensors.index.json` plus
shards) through the safetensors numpy API; nothing is ever unpickled, so a
directory holding only `pytorch_model.bin` is refused with a clear error.

`params` is the *content* of the flax `'params'` collection: a plain nested
dict of float numpy arrays (no `'params'` key on top, no boxing), e.g.
`params['encoder']['layers_0']['attention']['query']['kernel']`; use it as
`Transformer(config).apply({'params': params}, ...)`. `save_hf_checkpoint`
accepts the same (boxed `nn.LogicallyPartitioned` leaves are unboxed).

Name mapping (HF tensors are [out, in]; our kernels are [in, out]):
  shared.weight                                      token_embedder/embedding
  {enc,dec}oder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                                     {enc,dec}oder/relpos_bias/rel_embedding (T)
  encoder.block.i.layer.0.SelfAttention.{q,k,v,o}    encoder/layers_i/attention/{query,...}
  encoder.block.i.layer.0.layer_norm                 .../pre_attention_layer_norm/scale
  encoder.block.i.layer.1.DenseReluDense.{wi|wi_0,wi_1,wo}   .../mlp/...
  decoder.block.i.layer.{0,1,2}  self_attention / encoder_decoder_attention / mlp
  {enc,dec}oder.final_layer_norm.weight              {encoder_norm, decoder_norm}/scale
  lm_head.weight                                     decoder/logits_dense/kernel (T, untied)
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np
from flax import traverse_util
from flax.core import meta

from distill_sbs.models import network
from distill_sbs.models.config import T5Config
from distill_sbs.models.decoder_only_config import DecoderOnlyConfig, MODEL_TYPES

DECODER_ONLY_TYPES = MODEL_TYPES

Params = dict[str, Any]

# HF activation name (after `feed_forward_proj` parsing) -> ours.
_HF_TO_ACT = {'relu': 'relu', 'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu',
              'gelu': 'gelu_exact', 'silu': 'silu', 'swish': 'silu'}
_ACT_TO_HF_SINGLE = {'relu': 'relu', 'gelu': 'gelu_new', 'gelu_exact': 'gelu',
                     'silu': 'silu', 'swish': 'silu'}
_ACT_TO_HF_GATED = {'relu': 'gated-relu', 'gelu': 'gated-gelu', 'silu': 'gated-silu',
                    'swish': 'gated-silu'}
# Tensors HF writes that this network has no separate slot for.
_IGNORED = ('decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight',)


def _activations_from_hf(cfg: dict, where: str) -> tuple[str, ...]:
  proj = cfg.get('feed_forward_proj', 'relu')
  parts = proj.split('-')
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != 'gated'):
    raise ValueError(f'{where}: feed_forward_proj {proj!r} is not "ACT" or "gated-ACT"')
  act = 'gelu_new' if proj == 'gated-gelu' else parts[-1]
  if act not in _HF_TO_ACT:
    raise ValueError(f'{where}: unknown activation {act!r} (feed_forward_proj={proj!r}); '
                     f'supported: {sorted(_HF_TO_ACT)}')
  ours = _HF_TO_ACT[act]
  return (ours, 'linear') if len(parts) == 2 else (ours,)


def _feed_forward_proj(config: T5Config) -> str:
  acts = config.mlp_activations
  if len(acts) == 1 and acts[0] in _ACT_TO_HF_SINGLE:
    return _ACT_TO_HF_SINGLE[acts[0]]
  if len(acts) == 2 and acts[1] == 'linear' and acts[0] in _ACT_TO_HF_GATED:
    return _ACT_TO_HF_GATED[acts[0]]
  raise ValueError(f'mlp_activations {acts!r} cannot be written as an HF T5 '
                   'feed_forward_proj')


def _param_map(config: T5Config) -> list[tuple[str, tuple[str, ...], bool, tuple[int, ...]]]:
  """(hf name, our path, transpose?, our shape) for every parameter but lm_head."""
  d, inner = config.emb_dim, config.num_heads * config.head_dim
  out = [('shared.weight', ('token_embedder', 'embedding'), False,
          (config.vocab_size, d))]
  mlp_names = (['wi'] if len(config.mlp_activations) == 1 else
               [f'wi_{i}' for i in range(len(config.mlp_activations))])

  def attn(hf, ours):
    for h, o in (('q', 'query'), ('k', 'key'), ('v', 'value')):
      out.append((f'{hf}.{h}.weight', ours + (o, 'kernel'), True, (d, inner)))
    out.append((f'{hf}.o.weight', ours + ('out', 'kernel'), True, (inner, d)))

  def mlp(hf, ours):
    for n in mlp_names:
      out.append((f'{hf}.DenseReluDense.{n}.weight', ours + ('mlp', n, 'kernel'), True,
                  (d, config.mlp_dim)))
    out.append((f'{hf}.DenseReluDense.wo.weight', ours + ('mlp', 'wo', 'kernel'), True,
                (config.mlp_dim, d)))
    out.append((f'{hf}.layer_norm.weight', ours + ('pre_mlp_layer_norm', 'scale'), False,
                (d,)))

  def norm(hf, ours):
    out.append((f'{hf}.layer_norm.weight', ours + ('scale',), False, (d,)))

  rel = (config.num_heads, config.relative_attention_num_buckets)
  for stack, n in (('encoder', config.num_encoder_layers),
                   ('decoder', config.num_decoder_layers)):
    if n:
      out.append((f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
                  (stack, 'relpos_bias', 'rel_embedding'), True, rel))
    for i in range(n):
      hf, ours = f'{stack}.block.{i}.layer', (stack, f'layers_{i}')
      if stack == 'encoder':
        attn(f'{hf}.0.SelfAttention', ours + ('attention',))
        norm(f'{hf}.0', ours + ('pre_attention_layer_norm',))
        mlp(f'{hf}.1', ours)
      else:
        attn(f'{hf}.0.SelfAttention', ours + ('self_attention',))
        norm(f'{hf}.0', ours + ('pre_self_attention_layer_norm',))
        attn(f'{hf}.1.EncDecAttention', ours + ('encoder_decoder_attention',))
        norm(f'{hf}.1', ours + ('pre_cross_attention_layer_norm',))
        mlp(f'{hf}.2', ours)
    norm_name = 'encoder_norm' if stack == 'encoder' else 'decoder_norm'
    out.append((f'{stack}.final_layer_norm.weight', (stack, norm_name, 'scale'), False,
                (d,)))
  return out


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: invalid JSON: {e}') from e


def _read_tensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """All tensors of the checkpoint directory and the file each came from."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  single = os.path.join(path, 'model.safetensors')
  index = os.path.join(path, 'model.safetensors.index.json')
  if os.path.exists(single):
    files = [single]
  elif os.path.exists(index):
    weight_map = _read_json(index).get('weight_map')
    if not isinstance(weight_map, dict):
      raise ValueError(f'{index}: no "weight_map" object')
    files = [os.path.join(path, f) for f in sorted(set(weight_map.values()))]
  else:
    pickled = [f for f in ('pytorch_model.bin', 'pytorch_model.bin.index.json')
               if os.path.exists(os.path.join(path, f))]
    if pickled:
      raise ValueError(
          f'{path}: only {pickled[0]} found; pickled PyTorch checkpoints are never '
          'loaded. Convert it to model.safetensors first (e.g. '
          '`save_pretrained(..., safe_serialization=True)` in a trusted environment).')
    raise FileNotFoundError(f'{path}: no model.safetensors or '
                            'model.safetensors.index.json')
  tensors, source = {}, {}
  for f in files:
    if not os.path.exists(f):
      raise FileNotFoundError(f'{f}: shard listed in the index is missing')
    for name, value in load_file(f).items():
      tensors[name] = value
      source[name] = f
  return tensors, source


def config_from_hf(cfg: dict, where: str = 'config.json') -> T5Config:
  """HF `T5Config` dict -> our `T5Config` (logits_via_embedding decided later).

  Every field is passed explicitly so gin bindings of `T5Config` never leak in.
  """
  for key in ('vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_layers', 'num_heads'):
    if key not in cfg:
      raise ValueError(f'{where}: missing field {key!r}')
  return T5Config(
      vocab_size=cfg['vocab_size'], dtype='float32', emb_dim=cfg['d_model'],
      num_heads=cfg['num_heads'], num_encoder_layers=cfg['num_layers'],
      num_decoder_layers=cfg.get('num_decoder_layers') or cfg['num_layers'],
      head_dim=cfg['d_kv'], mlp_dim=cfg['d_ff'],
      mlp_activations=_activations_from_hf(cfg, where),
      dropout_rate=0.0, logits_via_embedding=False, float32_attention_logits=False,
      param_dtype='float32',
      relative_attention_num_buckets=cfg.get('relative_attention_num_buckets', 32),
      relative_attention_max_distance=cfg.get('relative_attention_max_distance', 128),
      layer_norm_epsilon=cfg.get('layer_norm_epsilon', 1e-6), remat_policy='none')


def load_hf_checkpoint(path: str) -> tuple[Any, Params]:
  """Reads an HF directory; returns (config, params) as described above.

  `model_type` 't5' gives a `T5Config`; 'llama', 'qwen2', 'qwen3' and
  'gemma3_text' a `DecoderOnlyConfig` (see `decoder_only_hf`).
  """
  path = os.fspath(path)
  config_path = os.path.join(path, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{config_path}: missing')
  hf_cfg = _read_json(config_path)
  model_type = hf_cfg.get('model_type', 't5')
  if model_type in DECODER_ONLY_TYPES:
    from distill_sbs.models import decoder_only_hf  # pylint: disable=g-import-not-at-top
    return decoder_only_hf.load(path, hf_cfg, config_path)
  if model_type != 't5':
    raise ValueError(f'{config_path}: model_type {model_type!r} is not one of '
                     f'{("t5",) + DECODER_ONLY_TYPES}')
  config = config_from_hf(hf_cfg, config_path)
  tensors, source = _read_tensors(path)

  def get(name: str, shape: tuple[int, ...], transpose: bool) -> np.ndarray:
    if name not in tensors:
      raise KeyError(f'{path}: missing parameter {name!r}')
    value = tensors[name]
    want = shape[::-1] if transpose else shape
    if tuple(value.shape) != want:
      raise ValueError(f'{source[name]}: parameter {name!r} has shape '
                       f'{tuple(value.shape)}, expected {want} from {config_path}')
    value = np.asarray(value)
    if value.dtype not in (np.float32, np.float64):
      value = value.astype(np.float32)
    return np.ascontiguousarray(value.T if transpose else value)

  flat = {}
  used = set(_IGNORED)
  for name, ours, transpose, shape in _param_map(config):
    flat[ours] = get(name, shape, transpose)
    used.add(name)
  shared = tensors['shared.weight']
  for name in ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'):
    if name in tensors:
      if tensors[name].shape != shared.shape or not np.array_equal(tensors[name], shared):
        raise ValueError(f'{source[name]}: {name!r} differs from shared.weight; this '
                         'network has one token embedding for encoder and decoder')
      used.add(name)
  # transformers 5.x writes `scale_decoder_outputs`; older configs only say
  # `tie_word_embeddings` (default True = original T5: tied and scaled).
  tied_flag = hf_cfg.get('tie_word_embeddings', True)
  scale = hf_cfg.get('scale_decoder_outputs', tied_flag)
  d = config.emb_dim
  lm_head = None
  if 'lm_head.weight' in tensors:
    lm_head = get('lm_head.weight', (d, config.vocab_size), True)  # [emb, vocab]
    used.add('lm_head.weight')
    if np.array_equal(lm_head.T, shared):
      lm_head = None
  if lm_head is None and scale:
    config = config.replace(logits_via_embedding=True)
  else:
    kernel = flat[('token_embedder', 'embedding')].T if lm_head is None else lm_head
    if scale:  # untied head on scaled outputs: fold d**-0.5 into the kernel
      kernel = kernel * np.float32(d ** -0.5)
    flat[('decoder', 'logits_dense', 'kernel')] = np.ascontiguousarray(kernel)
  unknown = sorted(set(tensors) - used)
  if unknown:
    raise ValueError(f'{source[unknown[0]]}: unexpected parameter(s) {unknown[:5]} for '
                     f'{config_path} (num_layers={config.num_encoder_layers}, '
                     f'num_decoder_layers={config.num_decoder_layers}, '
                     f'mlp_activations={config.mlp_activations})')
  return config, traverse_util.unflatten_dict(flat)


def hf_tensors(params: Any, mapping) -> tuple[dict, dict[str, np.ndarray]]:
  """(our flat params, HF name -> float32 tensor) for `mapping` rows
  `(hf name, our path, transpose, hf shape)`; a missing parameter or a wrong
  shape is an error naming it."""
  params = meta.unbox(params)
  if set(params) == {'params'}:
    params = params['params']
  flat = traverse_util.flatten_dict(dict(params))
  tensors = {}
  for name, ours, transpose, shape in mapping:
    if ours not in flat:
      raise KeyError(f'params: missing parameter {"/".join(ours)} (HF {name!r})')
    value = np.asarray(flat[ours], dtype=np.float32)
    if tuple(value.shape) != shape:
      raise ValueError(f'params: parameter {"/".join(ours)} has shape {value.shape}, '
                       f'expected {shape}')
    tensors[name] = np.ascontiguousarray(value.T if transpose else value)
  return flat, tensors


def save_hf_checkpoint(path: str, config: Any, params: Params) -> None:
  """Writes `config.json` + `model.safetensors` loadable by `transformers`."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  if isinstance(config, DecoderOnlyConfig):
    from distill_sbs.models import decoder_only_hf  # pylint: disable=g-import-not-at-top
    return decoder_only_hf.save(path, config, params)
  params = meta.unbox(params)
  if set(params) == {'params'}:
    params = params['params']
  # A `scan_layers` tree (stacked 'layers') is written as HF's per-layer blocks.
  params = network.unscan_layer_params(params)
  flat, tensors = hf_tensors(params, _param_map(config))
  for name in ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'):
    tensors[name] = tensors['shared.weight'].copy()
  if not config.logits_via_embedding:
    ours = ('decoder', 'logits_dense', 'kernel')
    if ours not in flat:
      raise KeyError('params: missing parameter decoder/logits_dense/kernel (HF '
                     "'lm_head.weight') for an untied config")
    kernel = np.asarray(flat[ours], dtype=np.float32)
    if kernel.shape != (config.emb_dim, config.vocab_size):
      raise ValueError(f'params: parameter decoder/logits_dense/kernel has shape '
                       f'{kernel.shape}, expected {(config.emb_dim, config.vocab_size)}')
    tensors['lm_head.weight'] = np.ascontiguousarray(kernel.T)
  hf_cfg = {
      'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5',
      'vocab_size': config.vocab_size, 'd_model': config.emb_dim, 'd_kv': config.head_dim,
      'd_ff': config.mlp_dim, 'num_layers': config.num_encoder_layers,
      'num_decoder_layers': config.num_decoder_layers, 'num_heads': config.num_heads,
      'relative_attention_num_buckets': config.relative_attention_num_buckets,
      'relative_attention_max_distance': config.relative_attention_max_distance,
      'dropout_rate': config.dropout_rate, 'layer_norm_epsilon': config.layer_norm_epsilon,
      'initializer_factor': 1.0, 'feed_forward_proj': _feed_forward_proj(config),
      'tie_word_embeddings': bool(config.logits_via_embedding),
      'is_encoder_decoder': True, 'use_cache': True, 'pad_token_id': 0,
      'eos_token_id': 1, 'decoder_start_token_id': 0, 'dtype': 'float32',
  }
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  save_file(tensors, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})


def load_vocabulary(path: str, extra_ids: Optional[int] = None):
  """`seqio.SentencePieceVocabulary` from `path/spiece.model`, or None."""
  spm = os.path.join(os.fspath(path), 'spiece.model')
  if not os.path.exists(spm):
    return None
  import seqio  # pylint: disable=g-import-not-at-top
  if extra_ids is None:
    tok_cfg = os.path.join(os.fspath(path), 'tokenizer_config.json')
    extra_ids = 100
    if os.path.exists(tok_cfg):
      extra_ids = int(_read_json(tok_cfg).get('extra_ids', 100))
  return seqio.SentencePieceVocabulary(spm, extra_ids=extra_ids)
