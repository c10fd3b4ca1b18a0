"""ULD on cross-tokenizer rows that do not align one to one (distill/uld.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from distill_sbs.distill import losses
from distill_sbs.distill import uld

A = -1e4


def _batch(ids, lps):
  ids, lps = jnp.asarray(ids, jnp.int32)[None], jnp.asarray(lps, jnp.float32)[None]
  L = ids.shape[1]
  return {'decoder_target_tokens': jnp.full((1, L), 5), 'decoder_loss_weights': jnp.ones((1, L)),
          'decoder_topk_ids': ids, 'decoder_topk_logprobs': lps}


def test_uld_is_the_l1_of_sorted_probabilities():
  logits = jnp.log(jnp.asarray([[0.1, 0.2, 0.6, 0.1]]))
  lps = jnp.log(jnp.asarray([[0.5, 0.3, 1e-30]]))
  got = uld.uld_per_token(logits, lps)
  # Teacher sorted (0.5, 0.3, 0), student sorted (0.6, 0.2, 0.1).
  np.testing.assert_allclose(got, [0.1 + 0.1 + 0.1], atol=1e-5)


def test_loss_is_the_top_k_kl_without_uld_rows_and_adds_uld_on_them():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(1, 3, 8)), jnp.float32)
  base = losses.TopKDistillLoss(rest_bucket=True)
  ids = [[3, 4, 0], [5, 6, 7], [0, 0, 0]]
  lps = [[-0.5, -1.5, A], [-0.2, -2.0, -3.0], [-0.3, -1.6, A]]   # row 2: ULD
  loss_fn = uld.CrossTokenizerTopKLoss(base=base, uld_weight=1.0)
  loss, m = loss_fn(logits, _batch(ids, lps))
  # The KL part equals the base loss on the same rows with row 2 all absent.
  ref, ref_m = base(logits, _batch(ids, [lps[0], lps[1], [A, A, A]]))
  np.testing.assert_allclose(m['kl'], ref_m['kl'], rtol=1e-6)
  want_uld = float(uld.uld_per_token(logits[:, 2], jnp.asarray([lps[2]]))[0]) / 3
  np.testing.assert_allclose(m['uld'], want_uld, rtol=1e-5)
  np.testing.assert_allclose(loss, ref + want_uld, rtol=1e-5)
  assert float(m['uld_tokens']) == 1
  # No ULD row (mismatch='zero' records): exactly the base loss.
  loss0, _ = loss_fn(logits[:, :2], _batch(ids[:2], lps[:2]))
  np.testing.assert_allclose(loss0, base(logits[:, :2], _batch(ids[:2], lps[:2]))[0],
                             rtol=1e-6)
  # Gradients are finite and reach the ULD row.
  g = jax.grad(lambda z: loss_fn(z, _batch(ids, lps))[0])(logits)
  assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g[:, 2]).max()) > 0


def test_cross_tokenizer_method_part_configures_the_loss(tmp_path, monkeypatch):
  import json
  import pathlib

  import gin

  import distill_sbs.tasks  # noqa: F401
  from distill_sbs.training import gin_macros
  repo = pathlib.Path(__file__).resolve().parents[2]
  parts = ['t5x_configs/models/t5_1_1/tiny.gin', 'gin/runs/cpu.gin',
           'gin/methods/first_cross_tokenizer.gin', 'gin/datasets/svamp.gin']
  monkeypatch.setenv('DISTILL_SBS_DATA_DIR', str(tmp_path / 'data'))
  manifest = tmp_path / 'data' / 'first' / 'svamp' / 'manifest.json'
  manifest.parent.mkdir(parents=True)
  manifest.write_text(json.dumps({'teacher_temperature': 1.7}))
  gin.clear_config()
  gin.add_config_file_search_path(str(repo))
  try:
    gin.parse_config_files_and_bindings(parts, ['MODEL_DIR="/tmp/x"', 'ULD_WEIGHT=0.5'],
                                        finalize_config=False)
    loss = gin.query_parameter('%LOSS_FN').scoped_configurable_fn()
    assert isinstance(loss, uld.CrossTokenizerTopKLoss) and loss.uld_weight == 0.5
    assert loss.base.teacher_temperature == 1.7 and loss.base.rest_bucket
    assert gin_macros.query('%TARGETS_LENGTH') == gin_macros.query('%RATIONALE_LENGTH')
    assert gin_macros.query('%MIXTURE_OR_TASK_NAME') == 'first_svamp_label'
  finally:
    gin.clear_config()
