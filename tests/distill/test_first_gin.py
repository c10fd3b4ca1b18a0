"""gin/first/*.gin parse, name existing tasks, and configure the FIRST loss."""
import glob
import json
import os
import pathlib

import gin
import pytest
import seqio

from distill_sbs.distill import losses

REPO = pathlib.Path(__file__).resolve().parents[2]
FILES = sorted(glob.glob(str(REPO / 'gin' / 'first' / '*_tiny*.gin')))


def _parse(path, tmp_path, bindings=()):
  gin.clear_config()
  gin.add_config_file_search_path(str(REPO))
  model_gin = REPO / 't5x_configs' / 'models' / 't5_1_1' / 'tiny.gin'
  if not model_gin.exists():  # the model gins are another module's; stub until present
    stub = tmp_path / 't5x_configs' / 'models' / 't5_1_1'
    stub.mkdir(parents=True, exist_ok=True)
    (stub / 'tiny.gin').write_text('MODEL = None\nDROPOUT_RATE = 0.0\n')
    gin.add_config_file_search_path(str(tmp_path))
  gin.parse_config_files_and_bindings([path], list(bindings), finalize_config=False)


@pytest.mark.parametrize('path', FILES, ids=[os.path.basename(f) for f in FILES])
def test_first_gin_files_parse_and_name_registered_tasks(path, tmp_path):
  import distill_sbs.tasks  # noqa: F401  (registers sbs, first, rank tasks)
  try:
    _parse(path, tmp_path, ['MODEL_DIR="/tmp/x"'])
    for macro in ('MIXTURE_OR_TASK_NAME', 'TRAIN_STEPS', 'BATCH_SIZE', 'TASK_FEATURE_LENGTHS'):
      gin.query_parameter(f'%{macro}')
    task = gin.query_parameter('%MIXTURE_OR_TASK_NAME')
    assert task in seqio.TaskRegistry.names() or task in seqio.MixtureRegistry.names()
    if 'finetune' not in path and 'distill' not in path:
      for macro in ('EVAL_TASK', 'VALIDATION_TASK'):
        name = gin.query_parameter(f'%{macro}')
        assert name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()
  finally:
    gin.clear_config()


def test_first_gin_configures_the_calibrated_loss(tmp_path, monkeypatch):
  import distill_sbs.tasks  # noqa: F401
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(tmp_path / 'data'))
  manifest = tmp_path / 'data' / 'first' / 'cqa' / 'manifest.json'
  manifest.parent.mkdir(parents=True)
  manifest.write_text(json.dumps({'teacher_temperature': 1.9}))
  try:
    _parse(str(REPO / 'gin' / 'first' / 'cqa_tiny.gin'), tmp_path,
           ['MODEL_DIR="/tmp/x"', 'KL_WEIGHT=0.25'])
    loss = gin.get_configurable(losses.TopKDistillLoss)()
    assert isinstance(loss, losses.TopKDistillLoss)
    assert loss.teacher_temperature == 1.9 and loss.kl_weight == 0.25
    assert loss.rest_bucket and loss.cross_entropy_without_topk
  finally:
    gin.clear_config()
