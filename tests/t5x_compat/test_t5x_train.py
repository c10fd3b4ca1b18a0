"""`python -m t5x.train` on t5x_configs/t5x/sbs_cqa_tiny.gin, end to end (needs T5X).

Trains a few steps on CPU with the paper's CQA data, checks the α-objective
loss falls and a checkpoint is written, then converts it for the project's
reader and checks the parameters arrive unchanged.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

t5x = pytest.importorskip(
    't5x', reason='T5X is not installed (not on the package registry); see docs/t5x.md '
    'to run the T5X adapter tests in an environment with T5X')

REPO = pathlib.Path(__file__).resolve().parents[2]
T5X_ROOT = pathlib.Path(t5x.__file__).resolve().parents[1]


def _train_losses(model_dir):
  """[(step, loss)] of the T5X 'train' summaries."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = []
  for f in sorted((model_dir / 'train').glob('events.out.tfevents.*')):
    for e in tf.compat.v1.train.summary_iterator(str(f)):
      for v in e.summary.value:
        if v.tag == 'loss':
          out.append((e.step, float(tf.make_ndarray(v.tensor))))
  return sorted(out)


def _require_t5x_configs():
  if not (T5X_ROOT / 't5x' / 'configs' / 'runs' / 'finetune.gin').is_file():
    pytest.skip(f"T5X's run gin files are not under {T5X_ROOT} (install T5X from its "
                'repository, see docs/t5x.md)')


@pytest.fixture
def t5x_gin(monkeypatch):
  """gin with T5X's and this repo's search paths; `__main__.train` as in
  `python -m t5x.train` (T5X's run files `import __main__ as train_script`)."""
  import gin  # pylint: disable=g-import-not-at-top
  import t5x.train  # pylint: disable=g-import-not-at-top
  _require_t5x_configs()
  monkeypatch.setattr(sys.modules['__main__'], 'train', t5x.train.train, raising=False)
  gin.clear_config()
  for p in (str(T5X_ROOT), str(REPO)):
    gin.add_config_file_search_path(p)
  yield gin
  gin.clear_config()


_T5_TINY = 't5x_configs/models/t5_1_1/tiny.gin'
_FINETUNE, _PRETRAIN = 't5x/configs/runs/finetune.gin', 't5x/configs/runs/pretrain.gin'
# (gin files of a composition, T5X model class, network module)
COMPOSITIONS = [
    (['t5x_configs/t5x/sbs_cqa_tiny.gin'], 'SbsEncoderDecoderModel', 'network'),
    ([_T5_TINY, _FINETUNE, 't5x_configs/t5x/standard_finetune.gin', 'gin/datasets/cqa.gin'],
     'ProjectLossEncoderDecoderModel', 'network'),
    ([_T5_TINY, _FINETUNE, 't5x_configs/t5x/sbs_llm.gin', 'gin/datasets/svamp.gin'],
     'SbsEncoderDecoderModel', 'network'),
    ([_T5_TINY, _FINETUNE, 't5x_configs/t5x/first.gin', 'gin/datasets/esnli.gin'],
     'FirstEncoderDecoderModel', 'network'),
    ([_T5_TINY, _PRETRAIN, 't5x_configs/t5x/ul2r.gin', 'gin/datasets/anli1.gin'],
     'ProjectLossEncoderDecoderModel', 'network'),
    *[([f't5x_configs/models/{m}/tiny.gin', _FINETUNE, 't5x_configs/t5x/sbs_decoder_only.gin',
        'gin/datasets/cqa.gin'], 'SbsDecoderOnlyModel', 'decoder_only')
      for m in ('qwen3', 'llama', 'gemma3')],
]


def test_every_method_composition_builds_its_t5x_model(t5x_gin, tmp_path, monkeypatch):
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(tmp_path))  # no calibrated manifests
  import seqio  # pylint: disable=g-import-not-at-top
  from distill_sbs import t5x_compat  # pylint: disable=g-import-not-at-top
  converters = {'SbsEncoderDecoderModel': t5x_compat.PairedFeatureConverter,
                'FirstEncoderDecoderModel': t5x_compat.TopKFeatureConverter,
                'ProjectLossEncoderDecoderModel': seqio.EncDecFeatureConverter,
                'SbsDecoderOnlyModel': t5x_compat.DecoderOnlyPairedFeatureConverter}
  method_files = {p.stem for p in (REPO / 't5x_configs' / 't5x').glob('*.gin')} - {
      'common', 'from_project_checkpoint', 'sbs_cqa_tiny'}
  assert method_files == {pathlib.Path(f[2]).stem for f, _, _ in COMPOSITIONS[1:]}
  for files, cls, network in COMPOSITIONS:
    t5x_gin.clear_config()
    t5x_gin.parse_config_files_and_bindings(
        files, ["MODEL_DIR = '/tmp/unused'", 'ALPHA = 0.3',
                'distill_sbs.data.topk.teacher_temperature.default = 1.7'],
        finalize_config=False)
    model = t5x_gin.query_parameter('%MODEL').scoped_configurable_fn()
    assert type(model) is getattr(t5x_compat, cls), files
    assert type(model.module).__module__ == f'distill_sbs.models.{network}', files
    task = t5x_gin.query_parameter('%MIXTURE_OR_TASK_NAME')
    while hasattr(task, 'scoped_configurable_fn'):  # a macro naming a macro
      task = task.scoped_configurable_fn()
    seqio.get_mixture_or_task(task)
    conv = model.FEATURE_CONVERTER_CLS(pack=False, use_custom_packing_ops=False)
    assert type(conv) is converters[cls], files
    if cls.startswith('Sbs'):
      assert model.project_loss_fn.alpha == 0.3
    elif cls.startswith('First'):
      assert model.project_loss_fn.teacher_temperature == 1.7


def test_t5x_train_sbs_cqa_tiny(tmp_path, raw_dir):
  _require_t5x_configs()
  env = dict(os.environ, DISTILL_SBS_DATA_DIR=str(tmp_path / 'data'),
             CUDA_VISIBLE_DEVICES='', XLA_FLAGS='', JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-m', 'distill_sbs.data.prepare', '--raw_dir',
                  str(raw_dir), '--datasets', 'cqa', '--max_rows', '80'],
                 check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
  model_dir = tmp_path / 'model'
  cmd = [sys.executable, '-m', 't5x.train',
         f'--gin_search_paths={T5X_ROOT},{REPO}',
         '--gin_file=t5x_configs/t5x/sbs_cqa_tiny.gin',
         f"--gin.MODEL_DIR='{model_dir}'",
         '--gin.TRAIN_STEPS=30', '--gin.BATCH_SIZE=8', '--gin.LEARNING_RATE=0.01',
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 192, 'targets': 128}",
         '--gin.EVAL_PERIOD=10', '--gin.utils.SaveCheckpointConfig.period=30',
         '--gin.EVAL_STEPS=1', '--gin.EVALUATOR_NUM_EXAMPLES=4']
  res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
  assert res.returncode == 0, res.stderr[-4000:]
  assert (model_dir / 'checkpoint_30' / 'state').is_dir()
  losses = _train_losses(model_dir)
  assert [s for s, _ in losses] == [10, 20, 30], losses
  assert all(np.isfinite(l) for _, l in losses)
  assert losses[-1][1] < losses[0][1] - 0.3, losses  # the α objective falls
  config = (model_dir / 'config.gin').read_text()
  assert "LOSS_FN = @losses.StepByStepLoss()" in config
  # Into the project's checkpoint layout, parameters unchanged.
  from distill_sbs.t5x_compat import checkpoints as conv  # pylint: disable=g-import-not-at-top
  from distill_sbs.models import checkpoint_formats as project_checkpoints  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  conv.t5x_to_project(str(model_dir), str(tmp_path / 'project_run'))
  ours = project_checkpoints.read_params(str(tmp_path / 'project_run'))
  theirs = project_checkpoints.read_orbax_state(str(model_dir / 'checkpoint_30'))['target']
  fa = jax.tree_util.tree_flatten_with_path(ours)[0]
  fb = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
  assert len(fa) == len(fb) > 40
  for path, value in fa:
    np.testing.assert_array_equal(value, fb[path])


def test_t5x_train_sbs_decoder_only_qwen3_tiny(tmp_path, raw_dir):
  """`python -m t5x.train` with a decoder-only student: the step-by-step loss
  falls; inference evaluation runs the project's decoding under T5X."""
  _require_t5x_configs()
  env = dict(os.environ, DISTILL_SBS_DATA_DIR=str(tmp_path / 'data'),
             CUDA_VISIBLE_DEVICES='', XLA_FLAGS='', JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-m', 'distill_sbs.data.prepare', '--raw_dir',
                  str(raw_dir), '--datasets', 'cqa', '--max_rows', '80'],
                 check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
  model_dir = tmp_path / 'model'
  cmd = [sys.executable, '-m', 't5x.train',
         f'--gin_search_paths={T5X_ROOT},{REPO}',
         '--gin_file=t5x_configs/models/qwen3/tiny.gin',
         '--gin_file=t5x/configs/runs/finetune.gin',
         '--gin_file=t5x_configs/t5x/sbs_decoder_only.gin',
         '--gin_file=gin/datasets/cqa.gin',
         f"--gin.MODEL_DIR='{model_dir}'", '--gin.INITIAL_CHECKPOINT_PATH=None',
         '--gin.TRAIN_STEPS=30', '--gin.BATCH_SIZE=8', '--gin.LEARNING_RATE=0.01',
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 192, 'targets': 128}",
         '--gin.EVAL_PERIOD=10', '--gin.utils.SaveCheckpointConfig.period=30',
         '--gin.EVAL_STEPS=1', '--gin.EVALUATOR_NUM_EXAMPLES=4',
         '--gin.t5x_compat.SbsDecoderOnlyModel.max_decode_length=8']
  res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
  assert res.returncode == 0, res.stderr[-4000:]
  assert (model_dir / 'checkpoint_30' / 'state').is_dir()
  losses = _train_losses(model_dir)
  assert [s for s, _ in losses] == [10, 20, 30], losses
  assert all(np.isfinite(l) for _, l in losses)
  assert losses[-1][1] < losses[0][1] - 0.3, losses
  config = (model_dir / 'config.gin').read_text()
  assert 'MODEL = @t5x_compat.SbsDecoderOnlyModel()' in config
  assert list((model_dir / 'inference_eval').glob('*.jsonl')), 'no inference evaluation'
