"""A tiny student trains on the UL2R mixture through the trainer (gin/ul2r), and
its checkpoint feeds the step-by-step config by gin alone."""
import json

import gin
import jax
import numpy as np

from distill_sbs.data import paths
from distill_sbs.models import checkpoint_formats
from distill_sbs.training import gin_utils
from distill_sbs.training import train_loop


def _train(gin_file, bindings):
  gin.clear_config()
  try:
    gin_utils.parse_gin([gin_file], bindings)
    return gin.get_configurable(train_loop.train)()
  finally:
    gin.clear_config()


def test_ul2r_tiny_trains_and_hands_off_to_sbs(sbs_data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(sbs_data_dir))
  ul2r_dir = tmp_path / 'ul2r'
  _train('gin/ul2r/cqa_corpus_tiny.gin', [
      f"MODEL_DIR = '{ul2r_dir}'", 'TRAIN_STEPS = 12', 'BATCH_SIZE = 8',
      "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 48}",
      'LEARNING_RATE = 0.01', 'LOG_PERIOD = 3', 'EVAL_PERIOD = 0',
      'CHECKPOINT_PERIOD = 12'])
  rows = [json.loads(l) for l in (ul2r_dir / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.3, losses
  assert rows[-1]['learning_rate'] == rows[0]['learning_rate']  # constant LR

  # Hand-off: the step-by-step config starts from the UL2R checkpoint, with
  # the [NLU] variants of the sbs tasks (0 steps: the state is the loaded one).
  state, _ = _train('gin/ul2r/cqa_sbs_tiny_from_ul2r.gin', [
      f"UL2R_MODEL_DIR = '{ul2r_dir}'", f"MODEL_DIR = '{tmp_path / 'sbs'}'",
      'TRAIN_STEPS = 0', 'BATCH_SIZE = 8', 'EVAL_PERIOD = 0', 'ALLOW_TRUNCATION = True',
      "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 48}"])
  saved = checkpoint_formats.read_params(str(ul2r_dir))
  got = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
  want = dict(jax.tree_util.tree_leaves_with_path(saved))
  assert len(got) == len(want) > 0
  for path, value in got:
    np.testing.assert_array_equal(np.asarray(value), np.asarray(want[path]))


def _model_config(gin_file, bindings=()):
  gin.clear_config()
  try:
    gin_utils.parse_gin([gin_file], ["MODEL_DIR = '/tmp/x'", *bindings])
    task = gin.query_parameter('%MIXTURE_OR_TASK_NAME')
    keys = ('emb_dim', 'num_heads', 'head_dim', 'num_encoder_layers',
            'num_decoder_layers', 'mlp_dim')
    cfg = {k: gin.query_parameter(f'distill_sbs.models.T5Config.{k}') for k in keys}
    cfg['vocab_size'] = gin.query_parameter('%VOCAB_SIZE')  # T5Config reads the macro
    return task, cfg
  finally:
    gin.clear_config()


def test_esnli_demo_pretraining_matches_the_demo_student():
  """gin/ul2r/esnli_corpus_demo.gin pre-trains exactly the demo's student shape,
  so its checkpoint is a valid INITIAL_CHECKPOINT_PATH for `make demo`."""
  import seqio  # pylint: disable=g-import-not-at-top
  import distill_sbs.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  task, pre = _model_config('gin/ul2r/esnli_corpus_demo.gin')
  _, demo = _model_config('gin/experiments/demo.gin', [  # set by the demo
      "MIXTURE_OR_TASK_NAME = 'sbs_esnli_label_gold'", 'TRAIN_STEPS = 1',
      "TASK_FEATURE_LENGTHS = {'inputs': 72, 'targets': 8}"])
  assert task == 'ul2r_esnli_corpus'
  assert task in set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  assert pre == demo
