"""FIRST end to end on CPU: tiny T5 teacher → top-k records → calibrate → student.

The teacher is a tiny random T5 (logits spread). Gold tokens are sampled from
the teacher at temperature 2 (so the teacher is over-confident by a factor of
~2), the teacher's top-5 at every gold position is stored in the record schema
(`schema.encode_topk`), `python -m distill_sbs.calibrate` fits T on the
validation split, and a tiny student is trained by the project's trainer
(`train_loop.train`) on the FIRST SeqIO task (`TopKFeatureConverter` batches)
with `TopKDistillLoss` at the calibrated T.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio
from flax.core import meta

from distill_sbs import calibrate, models
from distill_sbs.data import schema, topk
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.distill import losses
from distill_sbs.models import decoding
from distill_sbs.tasks import first
from distill_sbs.training import input_pipeline, train_loop
from distill_sbs.training import model as training_model

VOCAB = seqio.ByteVocabulary(extra_ids=100)
K, IN_LEN, TGT_LEN = 5, 16, 8
CONFIG = models.T5Config(vocab_size=384, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48,
                         num_encoder_layers=2, num_decoder_layers=2,
                         relative_attention_num_buckets=8, relative_attention_max_distance=20)


def _init(seed, scale=1.0):
  x = jnp.ones((2, 8), jnp.int32)
  params = meta.unbox(models.Transformer(CONFIG).init(
      jax.random.PRNGKey(seed), x, x, x, enable_dropout=False)['params'])
  return jax.tree.map(lambda p: p * scale, params)


def _encode_inputs(texts):
  enc = np.zeros((len(texts), IN_LEN), np.int32)
  for i, t in enumerate(texts):
    ids = VOCAB.encode(t)[:IN_LEN - 1] + [VOCAB.eos_id]
    enc[i, :len(ids)] = ids
  return enc


def _teacher_records(params, n, rng, sample_temperature=2.0):
  """Gold tokens sampled from the teacher at `sample_temperature`; top-k stored."""
  texts = [f'question {i}' for i in range(n)]
  enc = _encode_inputs(texts)
  targets = np.full((n, TGT_LEN), 2, np.int32)
  for t in range(TGT_LEN - 1):  # causal: row t only sees targets[:, :t]
    ids, lps = _topk(params, enc, targets, CONFIG.vocab_size)  # full distribution
    ids, lps = np.asarray(ids)[:, t], np.asarray(lps)[:, t]  # [n, vocab] sorted
    g = np.argmax(lps / sample_temperature + rng.gumbel(size=lps.shape), axis=1)
    targets[:, t] = np.maximum(ids[np.arange(n), g], 2)
  targets[:, -1] = VOCAB.eos_id
  ids, lps = _topk(params, enc, targets, CONFIG.vocab_size)  # same compiled fn; best first
  ids, lps = np.asarray(ids)[..., :K], np.asarray(lps)[..., :K]
  recs = []
  for i in range(n):
    rec = {'id': f'q{i}', 'inputs': texts[i], 'label': 'x',
           'teacher_target_ids': targets[i].astype(np.int64), 'teacher_topk_field': 'label',
           'teacher_vocab_hash': vocab_lib.vocab_hash(VOCAB)}
    rec.update(schema.encode_topk(np.asarray(ids)[i], np.asarray(lps)[i], CONFIG.vocab_size))
    recs.append(rec)
  return recs


def _topk(params, enc, targets, k):
  return decoding.topk_scores(CONFIG, params, enc, targets, k)


def _overlap_at_k(logits, batch):
  """Mean |student top-k ∩ teacher top-k| / k over real target tokens."""
  student = np.asarray(jax.lax.top_k(logits, K)[1])  # [b, l, k]
  teacher = np.asarray(batch['decoder_topk_ids'])
  hits = (student[..., :, None] == teacher[..., None, :]).any(-1).mean(-1)  # [b, l]
  w = np.asarray(batch['decoder_loss_weights']) > 0
  return float(hits[w].mean())


def test_first_end_to_end(tmp_path, capsys):
  rng = np.random.default_rng(0)
  teacher = _init(0, scale=3.0)
  recs = _teacher_records(teacher, 112, rng)
  schema.write_shards(str(tmp_path), 'validation', recs[16:])
  schema.write_shards(str(tmp_path), 'train', recs[:16])

  # Calibrate: the teacher's log-probs are twice as sharp as the data.
  report = calibrate.main([f'--records={tmp_path}', '--split=validation'])
  assert 1.6 < report['temperature'] < 2.5, report
  assert report['nll_after'] < report['nll_before']
  assert 'ECE  before' in capsys.readouterr().out

  # Student from the FIRST task, trained with the top-k KL at the calibrated T.
  first.register_first_tasks('first_e2e_test', str(tmp_path), vocabulary=VOCAB)
  ds = seqio.get_dataset('first_e2e_test', {'inputs': IN_LEN, 'targets': TGT_LEN},
                         dataset_split='train', shuffle=False,
                         feature_converter=topk.TopKFeatureConverter())
  batch = next(ds.batch(16).as_numpy_iterator())
  assert batch['decoder_topk_ids'].shape == (16, TGT_LEN, K)
  t_cal = topk.teacher_temperature(task='first_e2e_test')
  assert t_cal == report['temperature']
  loss_fn = losses.TopKDistillLoss(teacher_temperature=t_cal, kl_weight=1.0, rest_bucket=True)
  model = training_model.EncoderDecoderModel(
      module=models.Transformer(CONFIG), input_vocabulary=VOCAB, output_vocabulary=VOCAB,
      optimizer_def=optax.adam(1e-2), loss_fn=loss_fn)
  init = _init(1)

  def logits_of(p):
    return model.module.apply({'params': p}, batch['encoder_input_tokens'],
                              batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                              enable_dropout=False)

  overlap_before = _overlap_at_k(logits_of(init), batch)
  _, before = loss_fn(logits_of(init), batch)
  # The project's trainer (mesh over the 8 host devices, jit step) on the FIRST task.
  state, _ = train_loop.train(
      model=model, model_dir=str(tmp_path / 'student'), total_steps=25, log_period=5,
      train_dataset_cfg=input_pipeline.DatasetConfig(
          'first_e2e_test', {'inputs': IN_LEN, 'targets': TGT_LEN}, batch_size=16,
          shuffle=False, module=None, feature_converter_cls=topk.TopKFeatureConverter),
      checkpoint_period=1000, keep_checkpoints=1, progress_bar=False,
      async_checkpointing=False, initial_checkpoint_path=None, random_seed=1)
  logged = [json.loads(l) for l in (tmp_path / 'student' / 'metrics.jsonl').read_text().splitlines()]
  train_rows = [r for r in logged if 'kl' in r]
  assert train_rows[-1]['step'] == 25
  assert train_rows[-1]['loss'] < 0.5 * train_rows[0]['loss'], train_rows
  params = meta.unbox(state.params)
  logits = logits_of(params)
  _, after = loss_fn(logits, batch)
  assert float(after['kl']) < 0.5 * float(before['kl'])
  # Top-k agreement: overlap of the student's top-5 with the teacher's, and top-1.
  overlap_after = _overlap_at_k(logits, batch)
  assert overlap_after > overlap_before + 0.3, (overlap_before, overlap_after)
  assert float(after['topk_top1_agreement']) > float(before['topk_top1_agreement']) + 0.3
