"""gin/methods/first.gin configures the FIRST loss with the calibrated teacher T.
(Every method × dataset × size composition is parsed in
tests/training/test_run_gin_configs.py.)"""
import json
import pathlib

import gin

from distill_sbs.distill import losses

REPO = pathlib.Path(__file__).resolve().parents[2]
PARTS = ['t5x_configs/models/t5_1_1/tiny.gin', 'gin/runs/cpu.gin', 'gin/methods/first.gin',
         'gin/datasets/cqa.gin']


def _parse(bindings=()):
  gin.clear_config()
  gin.add_config_file_search_path(str(REPO))
  gin.parse_config_files_and_bindings(PARTS, list(bindings), finalize_config=False)


def test_first_gin_configures_the_calibrated_loss(tmp_path, monkeypatch):
  import distill_sbs.tasks  # noqa: F401
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(tmp_path / 'data'))
  manifest = tmp_path / 'data' / 'first' / 'cqa' / 'manifest.json'
  manifest.parent.mkdir(parents=True)
  manifest.write_text(json.dumps({'teacher_temperature': 1.9}))
  try:
    _parse(['MODEL_DIR="/tmp/x"', 'KL_WEIGHT=0.25'])
    loss = gin.get_configurable(losses.TopKDistillLoss)()
    assert isinstance(loss, losses.TopKDistillLoss)
    assert loss.teacher_temperature == 1.9 and loss.kl_weight == 0.25
    assert loss.rest_bucket and loss.cross_entropy_without_topk
  finally:
    gin.clear_config()
