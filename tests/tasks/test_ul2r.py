"""UL2R tasks: corpus from prepared records, user text files, mode-token variants."""
import json

import gin
import numpy as np
import pytest
import seqio

from distill_sbs.data import denoisers as dn
from distill_sbs.data import paths
from distill_sbs.data import schema
from distill_sbs.data import ul2
from distill_sbs.tasks import ul2r

LENGTHS = {'inputs': 64, 'targets': 48}


def _vocab():
  vocab = ul2r.output_features()['inputs'].vocabulary
  if int(vocab.vocab_size) != 359:
    pytest.fail('these tests expect the default ByteVocabulary(extra_ids=100)')
  return vocab


def _reconstruct(task_name, split='train', seed=0):
  """Every example's original chunk, in order (mode token and EOS removed)."""
  vocab = _vocab()
  modes = {tuple(vocab.encode(m)): m for m in ul2.MODE_TOKENS}
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      LENGTHS, split=split, shuffle=False, seed=seed)
  chunks, used = [], set()
  for ex in ds.as_numpy_iterator():
    assert len(ex['inputs']) <= LENGTHS['inputs']
    assert len(ex['targets']) <= LENGTHS['targets']
    assert ex['inputs'][-1] == 1 and ex['targets'][-1] == 1
    inputs, targets = ex['inputs'][:-1].tolist(), ex['targets'][:-1].tolist()
    mode = next(m for ids, m in modes.items() if tuple(inputs[:len(ids)]) == ids)
    used.add(mode)
    body = inputs[len(vocab.encode(mode)):]
    if mode == ul2.S2S:
      chunks.append(np.asarray(body + targets))
    else:
      chunks.append(dn.merge_spans(body, targets, 359, 100))
  return np.concatenate(chunks), used


def _byte_ids(texts):
  return np.concatenate([np.frombuffer(t.encode('utf-8'), np.uint8).astype(np.int32) + 3
                         for t in texts if t])


def test_corpus_task_denoises_inputs_and_rationales(sbs_data_dir, monkeypatch):
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(sbs_data_dir))
  recs = list(schema.read_records(paths.split_pattern('svamp', 'train')))
  texts = [t for r in recs for t in (r['inputs'], r['rationale'])]
  assert sum(bool(r['rationale']) for r in recs) > len(recs) / 2
  tokens, used = _reconstruct('ul2r_svamp_corpus')
  # Every input and rationale, in order, exactly: chunks lose nothing.
  np.testing.assert_array_equal(tokens, _byte_ids(texts))
  assert used == set(ul2.MODE_TOKENS)
  mix = seqio.get_mixture_or_task('ul2r_sbs_corpus')
  assert sorted(t.name for t in mix.tasks) == [
      'ul2r_anli1_corpus', 'ul2r_cqa_corpus', 'ul2r_esnli_corpus', 'ul2r_svamp_corpus']


def test_text_file_tasks_jsonl_plain_env_and_gin(tmp_path):
  docs = [f'document number {i}: ' + 'lorem ipsum dolor sit amet ' * (i % 7 + 1)
          for i in range(40)]
  jsonl = tmp_path / 'corpus.jsonl'
  jsonl.write_text('\n'.join(json.dumps({'body': d, 'other': 1}) for d in docs))
  plain = tmp_path / 'corpus.txt'
  plain.write_text('\n\n'.join(docs) + '\n')
  task = ul2r.register_ul2r_text_task('jsonl_test', str(jsonl), text_key='body')
  assert task.name == 'ul2r_jsonl_test'
  np.testing.assert_array_equal(_reconstruct(task.name)[0], _byte_ids(docs))
  names = ul2r.register_from_env(f'plain_test={plain}')
  assert names == ['ul2r_plain_test']
  np.testing.assert_array_equal(_reconstruct('ul2r_plain_test')[0], _byte_ids(docs))
  with gin.unlock_config():
    gin.parse_config([f"ul2r_text_task.name = 'gin_test'",
                      f"ul2r_text_task.path = '{plain}'"])
  try:
    assert ul2r.ul2r_text_task() == 'ul2r_gin_test'
  finally:
    gin.clear_config()
  assert 'ul2r_gin_test' in seqio.TaskRegistry.names()
  with pytest.raises(FileNotFoundError, match='no file matches'):
    ul2r.register_ul2r_text_task('missing', str(tmp_path / 'nope.txt'))
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"text": "ok"}\n{"text": 3}\n')
  ul2r.register_ul2r_text_task('bad', str(bad))
  with pytest.raises(Exception, match=r'bad.jsonl:2'):
    list(seqio.get_mixture_or_task('ul2r_bad').get_dataset(
        LENGTHS, split='train', shuffle=False).as_numpy_iterator())
  with pytest.raises(ValueError, match='name=path'):
    ul2r.register_from_env('just_a_path')


def test_mode_token_variants_of_sbs_tasks(sbs_data_dir, monkeypatch):
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(sbs_data_dir))
  vocab = _vocab()
  lengths = {'inputs': 256, 'targets': 64}
  base = seqio.get_mixture_or_task('sbs_cqa_label_gold').get_dataset(
      lengths, split='validation', shuffle=False)
  nlu = seqio.get_mixture_or_task('sbs_cqa_label_gold_nlu').get_dataset(
      lengths, split='validation', shuffle=False)
  prefix = vocab.encode('[NLU]')
  n = 0
  for a, b in zip(base.as_numpy_iterator(), nlu.as_numpy_iterator()):
    assert b['inputs'].tolist()[:len(prefix)] == prefix
    assert b['inputs'].tolist()[len(prefix):len(prefix) + 50] == a['inputs'].tolist()[:50]
    np.testing.assert_array_equal(a['targets'], b['targets'])
    n += 1
  assert n > 0
  mix = seqio.get_mixture_or_task('sbs_cqa_llm_s2s')
  assert sorted(t.name for t in mix.tasks) == ['sbs_cqa_predict_llm_s2s',
                                               'sbs_cqa_rationale_s2s']
  paired = seqio.get_mixture_or_task('sbs_cqa_paired_gold_nlu').get_dataset(
      lengths, split='validation', shuffle=False)
  ex = next(paired.as_numpy_iterator())
  assert ex['inputs'].tolist()[:5] == prefix == ex['rationale_inputs'].tolist()[:5]
  with pytest.raises(ValueError, match='unknown mode token'):
    ul2r.register_mode_token_variant('sbs_cqa_label_gold', '[XYZ]')


def test_gin_selects_the_denoiser_mixture(tmp_path):
  """gin/ul2r/ul2r.gin's knobs reach the registered tasks' preprocessor."""
  plain = tmp_path / 'docs.txt'
  plain.write_text('\n'.join(f'doc {i} ' + 'abc ' * 20 for i in range(30)) + '\n')
  ul2r.register_ul2r_text_task('gin_mix', str(plain))
  gin.clear_config()
  try:
    gin.parse_config(['from __gin__ import dynamic_registration',
                      'from distill_sbs.data import ul2',
                      'ul2.ul2r_objective.preset = None',
                      'ul2.make_denoisers.r_rate = 0.0',
                      'ul2.make_denoisers.x_rate = 0.0',
                      'ul2.make_denoisers.s_rate = 1.0'])
    _, used = _reconstruct('ul2r_gin_mix')
  finally:
    gin.clear_config()
  assert used == {ul2.S2S}
  _, used = _reconstruct('ul2r_gin_mix')  # default preset 'ul2r' again
  assert used == set(ul2.MODE_TOKENS)
