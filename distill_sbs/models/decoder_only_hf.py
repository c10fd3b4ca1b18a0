"""Hugging Face Llama / Qwen2 / Qwen3 / Gemma 3 text checkpoints <-> our params.

Reached through `hf_io.load_hf_checkpoint` / `save_hf_checkpoint` (dispatch on
`config.json`'s `model_type`); safetensors only, never a pickle.

Name mapping (HF tensors are [out, in]; our kernels are [in, out]), with
L = `decoder/layers_{i}` and A = `L/self_attention`:
  model.embed_tokens.weight                    decoder/token_embedder/embedding
  model.layers.i.input_layernorm               L/pre_self_attention_layer_norm/scale
  model.layers.i.self_attn.{q,k,v,o}_proj      A/{query,key,value,out}/{kernel (T), bias}
  model.layers.i.self_attn.{q,k}_norm          A/{query,key}_norm/scale
  model.layers.i.post_attention_layernorm      L/pre_mlp_layer_norm/scale (Llama, Qwen)
                                               L/post_self_attention_layer_norm/scale (Gemma)
  model.layers.i.pre_feedforward_layernorm     L/pre_mlp_layer_norm/scale (Gemma)
  model.layers.i.post_feedforward_layernorm    L/post_mlp_layer_norm/scale (Gemma)
  model.layers.i.mlp.{gate,up,down}_proj       L/mlp/{wi_0,wi_1,wo}/kernel (T)
  model.norm.weight                            decoder/decoder_norm/scale
  lm_head.weight                               decoder/logits_dense/kernel (T, untied)
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from flax import traverse_util

from distill_sbs.models import hf_io
from distill_sbs.models.decoder_only_config import DecoderOnlyConfig

Params = dict[str, Any]
_ARCH = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM',
         'qwen3': 'Qwen3ForCausalLM', 'gemma3_text': 'Gemma3ForCausalLM'}
_HF_ACT = {'silu': 'silu', 'swish': 'silu', 'gelu_pytorch_tanh': 'gelu', 'gelu_new': 'gelu',
           'gelu': 'gelu_exact'}
_ACT_HF = {'silu': 'silu', 'gelu': 'gelu_pytorch_tanh', 'gelu_exact': 'gelu'}


def _rope(params: dict, where: str) -> dict:
  """HF rope parameters -> our rope fields (global layers)."""
  rope_type = params.get('rope_type', params.get('type', 'default'))
  if rope_type not in ('default', 'linear', 'llama3'):
    raise ValueError(f'{where}: rope_type {rope_type!r} is not supported '
                     "(supported: 'default', 'linear', 'llama3')")
  if params.get('partial_rotary_factor', 1.0) != 1.0:
    raise ValueError(f'{where}: partial_rotary_factor is not supported')
  out = {'rope_type': rope_type, 'rope_theta': float(params.get('rope_theta', 10000.0))}
  if rope_type != 'default':
    out['rope_factor'] = float(params['factor'])
  if rope_type == 'llama3':
    out.update(rope_low_freq_factor=float(params['low_freq_factor']),
               rope_high_freq_factor=float(params['high_freq_factor']),
               rope_original_max_position_embeddings=int(
                   params['original_max_position_embeddings']))
  return out


def config_from_hf(cfg: dict, where: str = 'config.json') -> DecoderOnlyConfig:
  """HF config dict (llama / qwen2 / qwen3 / gemma3_text) -> `DecoderOnlyConfig`."""
  mt = cfg.get('model_type')
  for key in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
              'num_attention_heads'):
    if key not in cfg:
      raise ValueError(f'{where}: missing field {key!r}')
  if cfg.get('mlp_bias'):
    raise ValueError(f'{where}: mlp_bias is not supported')
  for key in ('final_logit_softcapping', 'attn_logit_softcapping'):
    if cfg.get(key) is not None:
      raise ValueError(f'{where}: {key} is not supported')
  if cfg.get('use_sliding_window') or cfg.get('use_bidirectional_attention'):
    raise ValueError(f'{where}: use_sliding_window / use_bidirectional_attention '
                     'are not supported')
  gemma = mt == 'gemma3_text'
  heads = cfg['num_attention_heads']
  act = cfg.get('hidden_activation') or cfg.get('hidden_act') or (
      'gelu_pytorch_tanh' if gemma else 'silu')
  if act not in _HF_ACT:
    raise ValueError(f'{where}: activation {act!r} is not supported')
  rope = cfg.get('rope_parameters') or cfg.get('rope_scaling') or {}
  rope_local = None
  if gemma:
    glob, local = rope.get('full_attention'), rope.get('sliding_attention')
    if glob is None:  # old format: rope_theta, rope_scaling, rope_local_base_freq
      glob = dict(cfg.get('rope_scaling') or {}, rope_theta=cfg.get('rope_theta', 1e6))
      local = {'rope_theta': cfg.get('rope_local_base_freq', 10000.0)}
    local = _rope(dict({'rope_theta': 10000.0}, **(local or {})), where)
    if local['rope_type'] != 'default':
      raise ValueError(f'{where}: scaled RoPE on sliding layers is not supported')
    rope_local, rope = local['rope_theta'], _rope(dict({'rope_theta': 1e6}, **glob), where)
  else:
    rope = _rope(dict({'rope_theta': cfg.get('rope_theta', 10000.0)}, **rope), where)
  n = cfg['num_hidden_layers']
  layer_types = ()
  if gemma:
    layer_types = cfg.get('layer_types') or [
        'sliding_attention' if (i + 1) % cfg.get('sliding_window_pattern', 6) else
        'full_attention' for i in range(n)]
  eos = cfg.get('eos_token_id', 1 if gemma else 2)
  eos = (eos,) if isinstance(eos, int) else tuple(eos or (1,))
  pad = cfg.get('pad_token_id')
  bias = bool(cfg.get('attention_bias', False))
  return DecoderOnlyConfig(
      model_type=mt, vocab_size=cfg['vocab_size'], emb_dim=cfg['hidden_size'],
      num_heads=heads, num_kv_heads=cfg.get('num_key_value_heads') or heads,
      num_layers=n, head_dim=cfg.get('head_dim') or cfg['hidden_size'] // heads,
      mlp_dim=cfg['intermediate_size'], mlp_activation=_HF_ACT[act],
      layer_norm_epsilon=float(cfg.get('rms_norm_eps', 1e-6)), norm_plus_one=gemma,
      post_norms=gemma, qk_norm=mt in ('qwen3', 'gemma3_text'), scale_embeddings=gemma,
      qkv_bias=bias or mt == 'qwen2', out_bias=bias and mt != 'qwen2',
      query_pre_attn_scalar=(float(cfg.get('query_pre_attn_scalar', 256)) if gemma else None),
      rope_local_theta=rope_local, sliding_window=cfg.get('sliding_window') if gemma else None,
      layer_types=tuple(layer_types),
      logits_via_embedding=bool(cfg.get('tie_word_embeddings', gemma)),
      max_position_embeddings=int(cfg.get('max_position_embeddings', 2048)),
      pad_id=int(eos[0] if pad is None else pad), eos_ids=eos,
      bos_id=cfg.get('bos_token_id'), dtype='float32', param_dtype='float32',
      dropout_rate=0.0, remat_policy='none', **rope)


def param_map(config: DecoderOnlyConfig) -> list[tuple[str, tuple[str, ...], bool, tuple]]:
  """(hf name, our path, transpose?, our shape) of every parameter."""
  c = config
  d, q, kv = c.emb_dim, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  out = [('model.embed_tokens.weight', ('decoder', 'token_embedder', 'embedding'), False,
          (c.vocab_size, d))]
  gemma_norms = c.post_norms
  for i in range(c.num_layers):
    hf, L = f'model.layers.{i}', ('decoder', f'layers_{i}')
    A = L + ('self_attention',)
    out.append((f'{hf}.input_layernorm.weight', L + ('pre_self_attention_layer_norm',
                                                     'scale'), False, (d,)))
    for h, ours, dim in (('q', 'query', q), ('k', 'key', kv), ('v', 'value', kv)):
      out.append((f'{hf}.self_attn.{h}_proj.weight', A + (ours, 'kernel'), True, (d, dim)))
      if c.qkv_bias:
        out.append((f'{hf}.self_attn.{h}_proj.bias', A + (ours, 'bias'), False, (dim,)))
    out.append((f'{hf}.self_attn.o_proj.weight', A + ('out', 'kernel'), True, (q, d)))
    if c.out_bias:
      out.append((f'{hf}.self_attn.o_proj.bias', A + ('out', 'bias'), False, (d,)))
    if c.qk_norm:
      for h, ours in (('q', 'query_norm'), ('k', 'key_norm')):
        out.append((f'{hf}.self_attn.{h}_norm.weight', A + (ours, 'scale'), False,
                    (c.head_dim,)))
    if gemma_norms:
      norms = (('post_attention_layernorm', 'post_self_attention_layer_norm'),
               ('pre_feedforward_layernorm', 'pre_mlp_layer_norm'),
               ('post_feedforward_layernorm', 'post_mlp_layer_norm'))
    else:
      norms = (('post_attention_layernorm', 'pre_mlp_layer_norm'),)
    for h, ours in norms:
      out.append((f'{hf}.{h}.weight', L + (ours, 'scale'), False, (d,)))
    for h, ours in (('gate', 'wi_0'), ('up', 'wi_1')):
      out.append((f'{hf}.mlp.{h}_proj.weight', L + ('mlp', ours, 'kernel'), True,
                  (d, c.mlp_dim)))
    out.append((f'{hf}.mlp.down_proj.weight', L + ('mlp', 'wo', 'kernel'), True,
                (c.mlp_dim, d)))
  out.append(('model.norm.weight', ('decoder', 'decoder_norm', 'scale'), False, (d,)))
  if not c.logits_via_embedding:
    out.append(('lm_head.weight', ('decoder', 'logits_dense', 'kernel'), True,
                (d, c.vocab_size)))
  return out


def load(path: str, hf_cfg: dict, config_path: str) -> tuple[DecoderOnlyConfig, Params]:
  """Reads a decoder-only HF directory (config already parsed)."""
  config = config_from_hf(hf_cfg, config_path)
  tensors, source = hf_io._read_tensors(path)  # pylint: disable=protected-access
  if config.logits_via_embedding and 'lm_head.weight' in tensors and not np.array_equal(
      tensors['lm_head.weight'], tensors['model.embed_tokens.weight']):
    config = config.replace(logits_via_embedding=False)  # tied flag but distinct head
  if not config.logits_via_embedding and 'lm_head.weight' not in tensors:
    raise KeyError(f'{path}: untied config but no lm_head.weight')
  flat, used = {}, set()
  for name, ours, transpose, shape in param_map(config):
    if name not in tensors:
      raise KeyError(f'{path}: missing parameter {name!r}')
    value = np.asarray(tensors[name])
    want = shape[::-1] if transpose else shape
    if tuple(value.shape) != want:
      raise ValueError(f'{source[name]}: parameter {name!r} has shape '
                       f'{tuple(value.shape)}, expected {want} from {config_path}')
    if value.dtype not in (np.float32, np.float64):
      value = value.astype(np.float32)
    flat[ours] = np.ascontiguousarray(value.T if transpose else value)
    used.add(name)
  used.add('lm_head.weight')  # tied: the same matrix as the embedding
  unknown = sorted(n for n in set(tensors) - used if not n.endswith('rotary_emb.inv_freq'))
  if unknown:
    raise ValueError(f'{source[unknown[0]]}: unexpected parameter(s) {unknown[:5]} for '
                     f'{config_path}')
  return config, traverse_util.unflatten_dict(flat)


def _rope_dict(config: DecoderOnlyConfig) -> dict:
  out = {'rope_type': config.rope_type, 'rope_theta': config.rope_theta}
  if config.rope_type != 'default':
    out['factor'] = config.rope_factor
  if config.rope_type == 'llama3':
    out.update(low_freq_factor=config.rope_low_freq_factor,
               high_freq_factor=config.rope_high_freq_factor,
               original_max_position_embeddings=config.rope_original_max_position_embeddings)
  return out


def _int_if_whole(x: float):
  return int(x) if float(x).is_integer() else float(x)


def hf_config(config: DecoderOnlyConfig) -> dict:
  """Our config -> an HF config.json dict."""
  c, mt = config, config.model_type
  gemma = mt == 'gemma3_text'
  expect = dict(norm_plus_one=gemma, post_norms=gemma, scale_embeddings=gemma,
                qk_norm=mt in ('qwen3', 'gemma3_text'))
  if mt == 'qwen2':
    expect.update(qkv_bias=True, out_bias=False)
  else:
    expect['out_bias'] = c.qkv_bias
  for field, value in expect.items():
    if getattr(c, field) != value:
      raise ValueError(f'{mt}: {field}={getattr(c, field)} cannot be written as HF {mt}')
  if c.sliding_window and not gemma:
    raise ValueError(f'{mt}: sliding windows are only written for gemma3_text')
  out = {
      'architectures': [_ARCH[mt]], 'model_type': mt, 'vocab_size': c.vocab_size,
      'hidden_size': c.emb_dim, 'intermediate_size': c.mlp_dim,
      'num_hidden_layers': c.num_layers, 'num_attention_heads': c.num_heads,
      'num_key_value_heads': c.num_kv_heads, 'head_dim': c.head_dim,
      'rms_norm_eps': c.layer_norm_epsilon, 'tie_word_embeddings': c.logits_via_embedding,
      'max_position_embeddings': c.max_position_embeddings,
      'pad_token_id': c.pad_id, 'bos_token_id': c.bos_id,
      'eos_token_id': c.eos_ids[0] if len(c.eos_ids) == 1 else list(c.eos_ids),
      'attention_dropout': 0.0, 'use_cache': True, 'dtype': 'float32',
  }
  if mt != 'qwen2':
    out['attention_bias'] = c.qkv_bias
  if gemma:
    if c.mlp_activation not in ('gelu', 'gelu_exact'):
      raise ValueError('gemma3_text: mlp_activation must be gelu')
    local = {'rope_type': 'default', 'rope_theta': c.rope_local_theta or c.rope_theta}
    out.update(hidden_activation=_ACT_HF[c.mlp_activation],
               query_pre_attn_scalar=_int_if_whole(c.query_pre_attn_scalar or c.head_dim),
               sliding_window=c.sliding_window or 4096,
               layer_types=list(c.layer_types) or ['full_attention'] * c.num_layers,
               rope_parameters={'full_attention': _rope_dict(c),
                                'sliding_attention': local})
  else:
    if c.query_pre_attn_scalar not in (None, c.head_dim):
      raise ValueError(f'{mt}: query_pre_attn_scalar cannot be written')
    out.update(hidden_act=_ACT_HF[c.mlp_activation], rope_parameters=_rope_dict(c))
  return out


def save(path: str, config: DecoderOnlyConfig, params: Params) -> None:
  """Writes `config.json` + `model.safetensors` loadable by `transformers`."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  cfg = hf_config(config)
  _, tensors = hf_io.hf_tensors(params, param_map(config))
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
  save_file(tensors, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})
