"""Checkpoint conversion between T5X and the project (needs T5X)."""
import numpy as np
import pytest

pytest.importorskip(
    't5x', reason='T5X is not installed (not on the package registry); see docs/t5x.md '
    'to run the T5X adapter tests in an environment with T5X')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from t5x import checkpoints as t5x_checkpoints  # noqa: E402

from distill_sbs.models import T5Config, Transformer  # noqa: E402
from distill_sbs.t5x_compat import checkpoints as conv  # noqa: E402
from distill_sbs.models import checkpoint_formats  # noqa: E402

CFG = T5Config(vocab_size=32, emb_dim=8, num_heads=2, num_encoder_layers=1,
               num_decoder_layers=1, head_dim=4, mlp_dim=16)


def _params(seed=0):
  x = jnp.ones((1, 4), jnp.int32)
  boxed = Transformer(CFG).init(jax.random.PRNGKey(seed), x, x, x, enable_dropout=False)
  from flax.core import meta  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, meta.unbox(boxed['params']))


def _assert_same(a, b):
  fa = jax.tree_util.tree_flatten_with_path(a)[0]
  fb = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(fa) == len(fb) > 10
  for path, value in fa:
    np.testing.assert_array_equal(np.asarray(fb[path]), value)


def test_params_checkpoint_is_read_by_t5x_and_both_readers(tmp_path):
  params = _params()
  ckpt = tmp_path / 'checkpoint_7'
  conv.write_t5x_params_checkpoint(str(ckpt), params, step=7)
  # T5X's own reader (no optimizer definition needed).
  state = t5x_checkpoints.load_t5x_checkpoint(str(ckpt))
  _assert_same(params, state['target'])
  assert int(state['state']['step']) == 7
  # The project's reader and the adapter's reader (model dir -> latest step).
  _assert_same(params, checkpoint_formats.read_params(str(ckpt)))
  _assert_same(params, conv.read_t5x_params(str(tmp_path)))
  assert conv.t5x_checkpoint_dir(str(tmp_path)) == str(ckpt)


def test_project_round_trip_through_t5x(tmp_path):
  params = _params(1)
  conv.write_t5x_params_checkpoint(str(tmp_path / 't5x' / 'checkpoint_3'), params, step=3)
  step_dir = conv.t5x_to_project(str(tmp_path / 't5x'), str(tmp_path / 'run'))
  assert step_dir.endswith('checkpoints/3')
  _assert_same(params, checkpoint_formats.read_params(str(tmp_path / 'run')))
  out = conv.project_to_t5x(str(tmp_path / 'run'), str(tmp_path / 'back'), step=3)
  _assert_same(params, t5x_checkpoints.load_t5x_checkpoint(out)['target'])


def test_missing_checkpoints_raise_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='holds no T5X checkpoint_<step>'):
    conv.read_t5x_params(str(tmp_path))
  conv.write_t5x_params_checkpoint(str(tmp_path / 'checkpoint_2'), _params(), step=2)
  with pytest.raises(FileNotFoundError, match=r'has no checkpoint_5 \(steps: \[2\]\)'):
    conv.t5x_checkpoint_dir(str(tmp_path), step=5)
  with pytest.raises(SystemExit):
    conv.main(['--t5x', str(tmp_path)])  # no destination
