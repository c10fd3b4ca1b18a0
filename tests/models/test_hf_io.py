"""Checkpoint I/O edge cases: sharded index, bad files, vocabulary."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from distill_sbs import models
from tests.models.helpers import build_hf_t5


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  path = tmp_path_factory.mktemp('hf_v1_1')
  build_hf_t5('v1_1', seed=1).save_pretrained(path, safe_serialization=True)
  return path


def copy_with(src, dst, edit=None, cfg_edit=None):
  shutil.copytree(src, dst)
  if edit:
    tensors = load_file(dst / 'model.safetensors')
    edit(tensors)
    save_file(tensors, dst / 'model.safetensors')
  if cfg_edit:
    cfg = json.loads((dst / 'config.json').read_text())
    cfg_edit(cfg)
    (dst / 'config.json').write_text(json.dumps(cfg))
  return dst


def test_sharded_index_loads_the_same(saved, tmp_path):
  tensors = load_file(saved / 'model.safetensors')
  names = sorted(tensors)
  half = len(names) // 2
  shards = {'model-00001-of-00002.safetensors': names[:half],
            'model-00002-of-00002.safetensors': names[half:]}
  for fname, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, tmp_path / fname)
  index = {'metadata': {}, 'weight_map': {k: f for f, ks in shards.items() for k in ks}}
  (tmp_path / 'model.safetensors.index.json').write_text(json.dumps(index))
  shutil.copy(saved / 'config.json', tmp_path / 'config.json')
  cfg_a, params_a = models.load_hf_checkpoint(saved)
  cfg_b, params_b = models.load_hf_checkpoint(tmp_path)
  assert cfg_a == cfg_b
  np.testing.assert_array_equal(
      params_a['decoder']['layers_2']['mlp']['wi_1']['kernel'],
      params_b['decoder']['layers_2']['mlp']['wi_1']['kernel'])
  np.testing.assert_array_equal(
      params_b['encoder']['layers_0']['attention']['query']['kernel'],
      tensors['encoder.block.0.layer.0.SelfAttention.q.weight'].T)


def test_wrong_shape_names_the_parameter(saved, tmp_path):
  name = 'decoder.block.1.layer.1.EncDecAttention.k.weight'

  def edit(t):
    t[name] = np.zeros((31, 32), np.float32)

  bad = copy_with(saved, tmp_path / 'bad', edit)
  with pytest.raises(ValueError, match=name.replace('.', r'\.') + r".*\(31, 32\)"):
    models.load_hf_checkpoint(bad)


def test_missing_key_names_the_parameter(saved, tmp_path):
  name = 'encoder.block.1.layer.1.DenseReluDense.wo.weight'
  bad = copy_with(saved, tmp_path / 'bad', lambda t: t.pop(name))
  with pytest.raises(KeyError, match=name.replace('.', r'\.')):
    models.load_hf_checkpoint(bad)


def test_extra_layer_is_rejected(saved, tmp_path):
  def edit(t):
    t['encoder.block.7.layer.0.layer_norm.weight'] = np.ones(32, np.float32)

  bad = copy_with(saved, tmp_path / 'bad', edit)
  with pytest.raises(ValueError, match=r'encoder\.block\.7'):
    models.load_hf_checkpoint(bad)


def test_unknown_activation_is_named(saved, tmp_path):
  bad = copy_with(saved, tmp_path / 'bad',
                  cfg_edit=lambda c: c.update(feed_forward_proj='gated-mish'))
  with pytest.raises(ValueError, match="'mish'"):
    models.load_hf_checkpoint(bad)


def test_pickled_only_directory_is_refused(tmp_path, saved):
  shutil.copy(saved / 'config.json', tmp_path / 'config.json')
  (tmp_path / 'pytorch_model.bin').write_bytes(b'not unpickled')
  with pytest.raises(ValueError, match='pytorch_model.bin'):
    models.load_hf_checkpoint(tmp_path)
  (tmp_path / 'config.json').unlink()
  with pytest.raises(FileNotFoundError, match='config.json'):
    models.load_hf_checkpoint(tmp_path)


def test_save_rejects_bad_params(saved, tmp_path):
  config, params = models.load_hf_checkpoint(saved)
  params['encoder']['layers_0']['mlp']['wo']['kernel'] = np.zeros((3, 3), np.float32)
  with pytest.raises(ValueError, match='encoder/layers_0/mlp/wo/kernel'):
    models.save_hf_checkpoint(tmp_path / 'out', config, params)
  config, params = models.load_hf_checkpoint(saved)
  del params['decoder']['decoder_norm']
  with pytest.raises(KeyError, match='decoder/decoder_norm/scale'):
    models.save_hf_checkpoint(tmp_path / 'out', config, params)


def test_load_vocabulary(tmp_path, saved):
  assert models.load_vocabulary(saved) is None
  import sentencepiece as spm
  text = tmp_path / 'corpus.txt'
  text.write_text('\n'.join(['the cat sat on the mat', 'a dog ate the bone',
                             'students distil teachers step by step'] * 50))
  spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / 'spiece'),
                                 vocab_size=30, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                 model_type='unigram')
  vocab = models.load_vocabulary(tmp_path)
  assert vocab.vocab_size == 30 + 100  # T5's 100 sentinel ids by default
  ids = vocab.encode('the cat')
  assert vocab.decode(ids) == 'the cat'
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'extra_ids': 0}))
  assert models.load_vocabulary(tmp_path).vocab_size == 30
