"""FIRST end to end with decoder-only models on CPU: a tiny random Qwen3 teacher
→ top-k records → calibrate → a tiny Qwen3 student trained by the project's
trainer on the FIRST task (the method's `TopKFeatureConverter` mapped to
`DecoderOnlyTopKFeatureConverter` by the model) with `TopKDistillLoss`.

As tests/test_first_e2e.py: gold tokens are sampled from the teacher at
temperature 2 (the teacher is over-confident by ~2), its top-5 at every gold
position (`models.topk_scores`, prompt = the inputs) is stored in the record
schema."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio
from flax.core import meta

from distill_sbs import calibrate, models
from distill_sbs.data import decoder_only_converters as doc
from distill_sbs.data import schema, topk
from distill_sbs.data import vocab as vocab_lib
from distill_sbs.distill import losses
from distill_sbs.tasks import first
from distill_sbs.training import decoder_only_model, input_pipeline, train_loop

VOCAB = seqio.ByteVocabulary(extra_ids=100)
K, IN_LEN, TGT_LEN = 5, 16, 8
CONFIG = models.DecoderOnlyConfig(model_type='qwen3', vocab_size=384, emb_dim=32, num_heads=4,
                                  num_kv_heads=2, num_layers=2, head_dim=8, mlp_dim=48,
                                  qk_norm=True)


def _init(seed, scale=1.0):
  x = jnp.ones((2, 8), jnp.int32)
  params = meta.unbox(models.DecoderOnlyTransformer(CONFIG).init(
      jax.random.PRNGKey(seed), x, x, enable_dropout=False)['params'])
  return jax.tree.map(lambda p: p * scale, params)


def _teacher_records(params, n, seed=0):
  texts = [f'question {i}' for i in range(n)]
  prompts = np.zeros((n, IN_LEN), np.int32)
  lengths = np.zeros((n,), np.int32)
  for i, t in enumerate(texts):
    ids = VOCAB.encode(t)[:IN_LEN - 1] + [VOCAB.eos_id]
    prompts[i, :len(ids)], lengths[i] = ids, len(ids)
  sampled, _ = models.generate(CONFIG, params, prompts, prompt_lengths=lengths,
                               max_decode_length=TGT_LEN - 1, method='sample',
                               temperature=2.0, seed=seed)
  # Gold = the teacher's sample, kept EOS-free and then ended by EOS (a
  # sampled EOS / pad id becomes 2).
  targets = np.concatenate([np.maximum(np.asarray(sampled), 2),
                            np.full((n, 1), VOCAB.eos_id, np.int32)], axis=1)
  ids, lps = models.topk_scores(CONFIG, params, prompts, targets, K, prompt_lengths=lengths)
  recs = []
  for i in range(n):
    rec = {'id': f'q{i}', 'inputs': texts[i], 'label': 'x',
           'teacher_target_ids': targets[i].astype(np.int64), 'teacher_topk_field': 'label',
           'teacher_vocab_hash': vocab_lib.vocab_hash(VOCAB)}
    rec.update(schema.encode_topk(np.asarray(ids)[i], np.asarray(lps)[i], CONFIG.vocab_size))
    recs.append(rec)
  return recs


def _teacher():
  """A sharp random teacher: logits of std ~7 (normalised hidden states against
  a 60x embedding)."""
  params = _init(0)
  emb = params['decoder']['token_embedder']['embedding']
  params['decoder']['token_embedder']['embedding'] = emb * 60.0
  return params


def test_first_end_to_end_decoder_only(tmp_path):
  teacher = _teacher()
  recs = _teacher_records(teacher, 112)
  schema.write_shards(str(tmp_path), 'validation', recs[16:])
  schema.write_shards(str(tmp_path), 'train', recs[:16])
  report = calibrate.main([f'--records={tmp_path}', '--split=validation'])
  assert 1.5 < report['temperature'] < 2.6, report

  first.register_first_tasks('first_e2e_decoder_only', str(tmp_path), vocabulary=VOCAB)
  loss_fn = losses.TopKDistillLoss(teacher_temperature=report['temperature'], kl_weight=1.0,
                                   rest_bucket=True)
  model = decoder_only_model.DecoderOnlyModel(
      models.DecoderOnlyTransformer(CONFIG), VOCAB, VOCAB, optax.adam(1e-2), loss_fn=loss_fn)
  cfg = input_pipeline.DatasetConfig(
      'first_e2e_decoder_only', {'inputs': IN_LEN, 'targets': TGT_LEN}, batch_size=16,
      shuffle=False, module=None, feature_converter_cls=topk.TopKFeatureConverter)
  assert isinstance(input_pipeline.feature_converter(cfg, model),
                    doc.DecoderOnlyTopKFeatureConverter)
  batch = next(iter(input_pipeline.get_dataset(cfg, model).as_numpy_iterator()))
  assert batch['decoder_topk_ids'].shape == (16, IN_LEN + TGT_LEN, K)

  def kl_and_top1(p):
    _, m = loss_fn(model.compute_logits(p, batch), batch)
    return float(m['kl']), float(m['topk_top1_agreement'])

  before = kl_and_top1(_init(1))
  state, _ = train_loop.train(
      model=model, model_dir=str(tmp_path / 'student'), total_steps=25, log_period=5,
      train_dataset_cfg=cfg, checkpoint_period=1000, keep_checkpoints=1,
      progress_bar=False, async_checkpointing=False, random_seed=1)
  logged = [json.loads(l) for l in
            (tmp_path / 'student' / 'metrics.jsonl').read_text().splitlines()]
  rows = [r for r in logged if 'kl' in r]
  assert rows[-1]['step'] == 25 and rows[-1]['loss'] < 0.5 * rows[0]['loss'], rows
  after = kl_and_top1(meta.unbox(state.params))
  assert after[0] < 0.5 * before[0], (before, after)
  assert after[1] > before[1] + 0.3, (before, after)
