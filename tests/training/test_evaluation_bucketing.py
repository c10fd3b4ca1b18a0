"""Bucketed evaluation (rows sorted by length, padding cut to a few bucket
lengths) gives exactly the predictions of unbucketed evaluation, and the same
scores, on rows of very different lengths."""
import numpy as np
import seqio
import tensorflow as tf

from distill_sbs import models
from distill_sbs.distill import losses
from distill_sbs.training import evaluation
from distill_sbs.training import model as model_lib
from distill_sbs.training import optimizers
from distill_sbs.training import partitioning
from distill_sbs.training import trainer as trainer_lib

VOCAB = 50
LENGTHS = {'inputs': 96, 'targets': 24}


def _model():
  cfg = models.T5Config(vocab_size=VOCAB, emb_dim=32, num_heads=2, head_dim=16,
                        num_encoder_layers=2, num_decoder_layers=2, mlp_dim=64,
                        dropout_rate=0.0, dtype='float32')
  vocab = seqio.PassThroughVocabulary(VOCAB)
  return model_lib.EncoderDecoderModel(
      module=models.Transformer(cfg), input_vocabulary=vocab, output_vocabulary=vocab,
      optimizer_def=optimizers.adafactor(optimizers.constant(1e-3)),
      loss_fn=losses.CrossEntropyLoss())


def _enumerated_ds(n=21):
  rng = np.random.default_rng(0)
  exs = []
  for i in range(n):
    n_in = int(rng.integers(3, 90)) if i % 3 else int(rng.integers(3, 12))
    n_tg = int(rng.integers(2, 20))
    exs.append({'inputs': np.append(rng.integers(2, VOCAB, n_in - 1), 1).astype(np.int32),
                'targets': np.append(rng.integers(2, VOCAB, n_tg - 1), 1).astype(np.int32)})
  ds = tf.data.Dataset.from_generator(lambda: iter(exs), output_signature={
      k: tf.TensorSpec([None], tf.int32) for k in ('inputs', 'targets')})
  return seqio.EncDecFeatureConverter(pack=False)(ds, LENGTHS).enumerate()


def test_bucketed_equals_unbucketed():
  model = _model()
  mesh_cfg = partitioning.MeshConfig(num_partitions=1)
  mesh = partitioning.create_mesh(mesh_cfg)
  rules = mesh_cfg.logical_axis_rules()
  shapes = {'encoder_input_tokens': (8, LENGTHS['inputs']),
            'decoder_input_tokens': (8, LENGTHS['targets']),
            'decoder_target_tokens': (8, LENGTHS['targets']),
            'decoder_loss_weights': (8, LENGTHS['targets'])}
  tr = trainer_lib.Trainer(model, mesh, rules, shapes)
  params = tr.init_state().params
  out = {}
  for bucket in (False, True):
    p = evaluation.Predictor(model, mesh, rules, tr.state_shardings.params, 8, bucket=bucket)
    out[bucket] = (p.predict_with_aux_fn(params)(_enumerated_ds()),
                   p.score_fn(params)(_enumerated_ds()))
  (pred_a, score_a), (pred_b, score_b) = out[False], out[True]
  assert [i for i, _ in pred_a] == [i for i, _ in pred_b] == list(range(21))
  for (_, (tok_a, lp_a)), (_, (tok_b, lp_b)) in zip(pred_a, pred_b):
    assert tok_a == tok_b  # the same greedy predictions, token for token
    np.testing.assert_allclose(lp_a, lp_b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose([s for _, s in score_a], [s for _, s in score_b],
                             rtol=1e-5, atol=1e-5)
  # The buckets are few and short: sorted rows, padding cut.
  batches = evaluation._padded_batches(  # pylint: disable=protected-access
      _enumerated_ds(), 8, (('encoder_input_tokens',),))
  widths = [f['encoder_input_tokens'].shape[1] for _, f, _ in batches]
  assert widths == sorted(widths, reverse=True) and widths[-1] < LENGTHS['inputs']
  assert set(widths) <= {16, 32, 64, 96}
