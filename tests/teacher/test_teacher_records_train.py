"""Generated records feed the SeqIO tasks with no conversion (records_dir = out_dir)."""
import os

import seqio

from distill_sbs.data import schema
from distill_sbs.data import vocab
from distill_sbs.teacher import base
from distill_sbs.teacher import generation
from distill_sbs.teacher import openai_backend
from distill_sbs.teacher.loopback import LoopbackServer
from tests.teacher.teacher_helpers import KEY_ENV, SECRET

LENGTHS = {'inputs': 2048, 'targets': 2048}


def _pairs(name, split):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  return [(ex['inputs_pretokenized'].decode(), ex['targets_pretokenized'].decode())
          for ex in ds.as_numpy_iterator()]


def test_out_dir_is_a_records_dir_for_sbs_tasks(cqa_data_dir, cqa_teacher, tmp_path,
                                                monkeypatch):
  from distill_sbs.tasks import sbs  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(KEY_ENV, SECRET)
  data = tmp_path / 'data'
  test_recs = list(schema.read_records(str(cqa_data_dir / 'cqa' / 'test.tfrecord-*')))
  schema.write_shards(str(data / 'cqa'), 'train', test_recs[:12])
  schema.write_shards(str(data / 'cqa'), 'test', test_recs[12:20])
  out = tmp_path / 'out'
  config = generation.GenerationConfig(out_dir=str(out), dataset='cqa', split='train',
                                       data_dir=str(data), copy_splits=('test',),
                                       progress=False)
  with LoopbackServer(cqa_teacher) as server:
    manifest = generation.run(config, openai_backend.OpenAIBackend(
        server.base_url, 'fake', api_key_env=KEY_ENV), base.SamplingConfig())
  assert manifest['files'] == ['train.tfrecord-00000-of-00001', 'test.tfrecord-00000-of-00001']
  generated = list(schema.read_records(str(out / 'train.tfrecord-*')))
  names = sbs.register_sbs_tasks('cqa', records_dir=str(out), prefix='sbs_tteach',
                                 fractions=())
  try:
    vocab.reset_default_vocabulary()
    assert _pairs('sbs_tteach_cqa_rationale', 'train') == [
        ('explain: ' + r['inputs'], r['rationale']) for r in generated if r['rationale']]
    assert _pairs('sbs_tteach_cqa_label_llm', 'train') == [
        (r['inputs'], r['llm_label']) for r in generated if r['llm_label']]
    assert _pairs('sbs_tteach_cqa_label_gold', 'test') == [
        (r['inputs'], r['label']) for r in test_recs[12:20]]
    assert 0 < sum(bool(r['rationale']) for r in generated) < 12
  finally:
    for n in names:
      for reg in (seqio.TaskRegistry, seqio.MixtureRegistry):
        if n in reg.names():
          reg.remove(n)
  assert os.path.exists(out / 'manifest.json')
