"""Every experiment gin (gin/sbs, gin/baselines) and run gin parses with its
model file, sets every required macro but MODEL_DIR, and names registered tasks."""
import pathlib

import gin
import pytest
import seqio

import distill_sbs.tasks  # noqa: F401  (registers the sbs tasks)
from distill_sbs.training import gin_utils

REPO = pathlib.Path(__file__).resolve().parents[2]
FILES = sorted((REPO / 'gin' / 'sbs').glob('*_*.gin')) + sorted(
    (REPO / 'gin' / 'baselines').glob('*.gin'))


def test_all_sizes_and_datasets_present():
  names = {f.stem for f in FILES}
  for ds in ('cqa', 'svamp', 'esnli', 'anli1'):
    for size in ('tiny', 'small', 'base'):
      assert f'{ds}_{size}' in names
      for kind in ('finetune', 'distill', 'cot'):
        assert f'{ds}_{kind}_{size}' in names


@pytest.mark.parametrize('path', FILES, ids=lambda p: p.stem)
def test_experiment_gin_parses(path):
  with gin.unlock_config():
    gin.clear_config()
    try:
      gin_utils.parse_gin([str(path)], ["MODEL_DIR = '/tmp/x'"], [str(REPO)])
      task = gin.query_parameter('%MIXTURE_OR_TASK_NAME')
      names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
      assert task in names
      eval_task = gin.query_parameter(
          'distill_sbs.training.evaluation.EvalConfig.mixture_or_task_name')
      if isinstance(eval_task, str):
        assert eval_task in names
      size = path.stem.rsplit('_', 1)[1]
      assert gin.query_parameter('distill_sbs.models.T5Config.emb_dim') == {
          'tiny': 64, 'small': 512, 'base': 768}[size]
      lengths = gin.query_parameter('%TASK_FEATURE_LENGTHS')
      assert set(lengths) == {'inputs', 'targets'}
    finally:
      gin.clear_config()


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
