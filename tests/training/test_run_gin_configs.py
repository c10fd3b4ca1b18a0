"""Every experiment composition (method × dataset × model size, with the CPU
run part) parses, names registered tasks, builds its model (abstractly, so the
base size costs nothing) and its training dataset (one real batch from
prepared records); the two kept experiment files are the compositions they
say; the run gins require their macros."""
import math
import pathlib

import gin
import jax
import numpy as np
import pytest
import seqio

import distill_sbs.tasks  # noqa: F401  (registers the tasks)
from distill_sbs.data import schema
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.experiments import methods as methods_lib
from distill_sbs.training import gin_macros
from distill_sbs.training import gin_utils
from distill_sbs.training import input_pipeline

REPO = pathlib.Path(__file__).resolve().parents[2]
METHODS = tuple(methods_lib.METHODS)
DATASETS = ('cqa', 'svamp', 'esnli', 'anli1')
SIZES = {'tiny': 64, 'small': 512, 'base': 768}
K = 5


@gin.configurable
def _probe(model=None, train_cfg=None, eval_task=None):
  """Evaluates what train_loop.train would receive."""
  return model, train_cfg, eval_task


def _parts(method, ds, size, run='cpu'):
  return [f't5x_configs/models/t5_1_1/{size}.gin', f'gin/runs/{run}.gin',
          f'gin/methods/{method}.gin', f'gin/datasets/{ds}.gin']


def _parse(files, bindings=()):
  gin.clear_config()
  gin_utils.parse_gin(files, ["MODEL_DIR = '/tmp/x'", *bindings,
                              '_probe.model = %MODEL',
                              '_probe.train_cfg = @train/input_pipeline.DatasetConfig()',
                              '_probe.eval_task = %EVAL_TASK'], [str(REPO)])


def test_method_and_dataset_parts_exist():
  assert sorted(p.stem for p in (REPO / 'gin/methods').glob('*.gin')) == sorted(METHODS)
  assert sorted(p.stem for p in (REPO / 'gin/datasets').glob('*.gin')) == sorted(DATASETS)
  # T5X method files carry the same names (standard_distill and sbs_gold are a
  # task binding on standard_finetune / sbs_llm there: tests/t5x_compat).
  t5x = {p.stem for p in (REPO / 't5x_configs/t5x').glob('*.gin')}
  assert {'standard_finetune', 'sbs_llm', 'first'} <= t5x
  # Dataset parts are macros only, so T5X launches include them too.
  for ds in DATASETS:
    lines = [l for l in (REPO / f'gin/datasets/{ds}.gin').read_text().splitlines()
             if l.strip() and not l.startswith('#')]
    assert all(l.split('=')[0].strip().isupper() for l in lines), (ds, lines)


@pytest.mark.parametrize('size', sorted(SIZES))
@pytest.mark.parametrize('ds', DATASETS)
@pytest.mark.parametrize('method', METHODS)
def test_composition_parses_and_builds_its_model(method, ds, size, composed_data_dir,
                                                 monkeypatch):
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(composed_data_dir))  # FIRST's T
  names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  try:
    _parse(_parts(method, ds, size))
    model, train_cfg, eval_task = _probe()
    assert train_cfg.mixture_or_task_name in names
    assert eval_task in names
    assert gin_macros.query('%TEST_TASK') in names
    assert train_cfg.task_feature_lengths == gin_macros.read_macros(
        _parts(method, ds, size))['TASK_FEATURE_LENGTHS']
    assert train_cfg.task_feature_lengths['inputs'] == gin_macros.query('%INPUTS_LENGTH')
    assert model.module.config.emb_dim == SIZES[size]
    shapes = {'encoder_input_tokens': (2, 8), 'decoder_input_tokens': (2, 4),
              'decoder_target_tokens': (2, 4)}
    variables = jax.eval_shape(lambda r: model.get_initial_variables(r, shapes),
                               jax.random.PRNGKey(0))
    n_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(variables))
    assert n_params > {'tiny': 1e5, 'small': 5e7, 'base': 2e8}[size]
  finally:
    gin.clear_config()


def _write_first_records(sbs_data_dir, root):
  """Top-k records for every dataset from the prepared ones: the teacher's label
  tokens (byte vocabulary) with a made-up top-k around each, calibrated T=1."""
  vocab = vocab_lib.get_vocabulary()
  for ds in DATASETS:
    (root / ds).symlink_to(sbs_data_dir / ds)
    for split in ('train', 'validation'):
      recs = []
      for r in schema.read_records(str(sbs_data_dir / ds / f'{split}.tfrecord*')):
        ids = np.asarray(vocab.encode(r['llm_label'] or 'x') + [vocab.eos_id], np.int64)
        topk_ids = (ids[:, None] + np.arange(K)[None]) % vocab.vocab_size
        lps = np.log(np.array([0.6, 0.2, 0.1, 0.05, 0.05]))[None].repeat(len(ids), 0)
        rec = {k: r[k] for k in ('id', 'inputs', 'label', 'rationale', 'llm_label')}
        rec.update(teacher_target_ids=ids, teacher_topk_field='label',
                   teacher_vocab_hash=vocab_lib.vocab_hash(vocab))
        rec.update(schema.encode_topk(topk_ids, lps, vocab.vocab_size))
        recs.append(rec)
      schema.write_shards(str(root / 'first' / ds), split, recs)
    (root / 'first' / ds / 'manifest.json').write_text('{"teacher_temperature": 1.0}')


@pytest.fixture(scope='module')
def composed_data_dir(sbs_data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp('composed_data')
  _write_first_records(sbs_data_dir, root)
  return root


@pytest.mark.parametrize('ds', DATASETS)
@pytest.mark.parametrize('method', METHODS)
def test_composition_builds_its_training_dataset(method, ds, composed_data_dir, monkeypatch):
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(composed_data_dir))
  try:
    _parse(_parts(method, ds, 'tiny'), ['BATCH_SIZE = 4'])
    model, train_cfg, _ = _probe()
    batch = next(iter(input_pipeline.get_dataset(train_cfg, model).as_numpy_iterator()))
  finally:
    gin.clear_config()
  lengths = train_cfg.task_feature_lengths
  assert batch['encoder_input_tokens'].shape == (4, lengths['inputs'])
  assert batch['decoder_target_tokens'].shape == (4, lengths['targets'])
  assert (batch['decoder_target_tokens'] > 0).any(axis=1).all()  # every row has targets
  if method.startswith('first'):
    assert batch['decoder_topk_ids'].shape == (4, lengths['targets'], K)
  if method.startswith('sbs'):
    assert set(np.unique(batch['decoder_task_ids'][batch['decoder_target_tokens'] > 0])) == {0, 1}


def test_kept_experiment_files_are_their_compositions():
  """gin/sbs/cqa_tiny.gin and t5x_configs/t5x/sbs_cqa_tiny.gin (checked outside
  the repo) are step-by-step on CQA, tiny, CPU budget."""
  a = gin_macros.read_macros(['gin/sbs/cqa_tiny.gin'])
  b = gin_macros.read_macros(_parts('sbs_llm', 'cqa', 'tiny'))
  assert a == b
  assert a['MIXTURE_OR_TASK_NAME'] == 'sbs_cqa_paired_llm'
  assert a['TASK_FEATURE_LENGTHS'] == {'inputs': 768, 'targets': 288}  # packed rows
  assert (a['TRAIN_STEPS'], a['BATCH_SIZE'], a['LEARNING_RATE']) == (1000, 16, 0.003)
  text = (REPO / 't5x_configs/t5x/sbs_cqa_tiny.gin').read_text()
  for inc in ('t5x_configs/models/t5_1_1/tiny.gin', 't5x_configs/t5x/sbs_llm.gin',
              'gin/datasets/cqa.gin'):
    assert f"include '{inc}'" in text
  for line in ('TRAIN_STEPS = 1000', 'BATCH_SIZE = 16', 'LEARNING_RATE = 0.003'):
    assert line in text  # the same budget as gin/runs/cpu.gin


def test_missing_model_dir_is_named():
  with gin.unlock_config():
    gin.clear_config()
    try:
      with pytest.raises(ValueError, match='not set: MODEL_DIR'):
        gin_utils.parse_gin([str(REPO / 'gin' / 'sbs' / 'cqa_tiny.gin')], [], [str(REPO)])
    finally:
      gin.clear_config()


@pytest.mark.parametrize('run,required', [
    ('eval', ['MIXTURE_OR_TASK_NAME', 'CHECKPOINT_PATH', 'EVAL_OUTPUT_DIR']),
    ('infer', ['MIXTURE_OR_TASK_NAME', 'CHECKPOINT_PATH', 'INFER_OUTPUT_DIR']),
    ('pretrain', ['MIXTURE_OR_TASK_NAME', 'TASK_FEATURE_LENGTHS', 'TRAIN_STEPS', 'MODEL_DIR']),
    ('finetune', ['MIXTURE_OR_TASK_NAME', 'TASK_FEATURE_LENGTHS', 'TRAIN_STEPS', 'MODEL_DIR'])])
def test_run_gins_require_their_macros(run, required):
  files = [str(REPO / 't5x_configs/models/t5_1_1/tiny.gin'),
           str(REPO / f't5x_configs/runs/{run}.gin')]
  with gin.unlock_config():
    gin.clear_config()
    try:
      with pytest.raises(ValueError) as e:
        gin_utils.parse_gin(files, [], [str(REPO)])
      assert f'not set: {", ".join(sorted(required))}' in str(e.value)
      gin.clear_config()
      gin_utils.parse_gin(files, [f"{m} = 'x'" for m in required], [str(REPO)])
    finally:
      gin.clear_config()
