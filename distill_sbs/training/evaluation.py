"""Evaluation: the one path from a checkpoint to metrics.

- `Predictor`: the model's jitted, sharded decoding (`predict_batch_with_aux`)
  and scoring (`score_batch`) over seqio datasets;
- `run_inference_eval`: the tasks' own metric functions through
  `seqio.Evaluator` (training-time evaluation, `python -m distill_sbs.eval`);
- `student_eval`: test accuracy, rank accuracy and calibration of one label
  task, with one prediction and confidence per example (sweeps, demo,
  `python -m distill_sbs.experiments.evaluate`); `validation_loss`.

Every process sees the whole evaluation set; each feeds its rows of a padded
global batch and the predictions are gathered back on every process.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.experimental import multihost_utils

from distill_sbs.data import formats
from distill_sbs.metrics import accuracy
from distill_sbs.metrics import calibration
from distill_sbs.metrics import choices
from distill_sbs.metrics import rank_classification
from distill_sbs.training import checkpoints as ckpt_lib
from distill_sbs.training import input_pipeline
from distill_sbs.training import partitioning
from distill_sbs.training import train_state as ts_lib


@gin.configurable(module='distill_sbs.training.evaluation')
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Inference evaluation (T5X's `infer_eval_dataset_cfg` plus options)."""
  mixture_or_task_name: str
  task_feature_lengths: Optional[Mapping[str, int]] = None
  split: str = 'validation'
  batch_size: int = 32
  num_examples: Optional[int] = None
  use_cached: bool = False
  seed: int = 42
  module: Optional[str] = 'distill_sbs.tasks'
  feature_converter_cls: Any = seqio.EncDecFeatureConverter
  compute_scores: bool = True


def _to_global(rows: Mapping[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Full (replicated-on-host) rows → global arrays; each process feeds its slice."""
  n, i = jax.process_count(), jax.process_index()
  local = {}
  for k, v in rows.items():
    per = v.shape[0] // n
    local[k] = v[i * per:(i + 1) * per]
  return partitioning.make_global_batch(local, mesh)


def _gather(x: jax.Array) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


MIN_BUCKET = 16


def bucket_length(n: int, full: int) -> int:
  """The padded length of a bucket holding rows up to `n` real tokens: the next
  power of two (at least MIN_BUCKET), at most the dataset's `full` length, so a
  few shapes are compiled."""
  b = MIN_BUCKET
  while b < n:
    b *= 2
  return min(b, full)


def _real_length(x: np.ndarray) -> int:
  """Rows' longest real prefix: the last non-zero position + 1 (padding is 0)."""
  nz = np.nonzero(x.reshape(x.shape[0], -1) if x.ndim > 2 else x)[1]
  return int(nz.max()) + 1 if nz.size else 1


def _padded_batches(ds: tf.data.Dataset, batch_size: int,
                    trim: Sequence[Sequence[str]] = ()
                    ) -> Sequence[tuple[np.ndarray, dict[str, np.ndarray], int]]:
  """(indices, features padded to batch_size rows, number of real rows).

  With `trim` (groups of feature names sharing a length axis), rows are sorted
  by their real length in the first feature of the first group and every group
  is cut to `bucket_length` of its batch's longest row: batches of short rows
  do no work on padding (the results are the same rows, by index)."""
  rows = list(ds.as_numpy_iterator())
  if trim:
    key = trim[0][0]
    rows.sort(key=lambda r: -_real_length(r[1][key][None]))
  out = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    idx = np.array([i for i, _ in chunk])
    feats = {k: np.stack([f[k] for _, f in chunk]) for k in chunk[0][1]}
    for group in trim:
      present = [k for k in group if k in feats]
      if present:
        full = feats[present[0]].shape[1]
        n_len = bucket_length(max(_real_length(feats[k]) for k in present), full)
        feats.update({k: feats[k][:, :n_len] for k in present})
    n = len(idx)
    if n < batch_size:
      feats = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, 0)])
               for k, v in feats.items()}
    out.append((idx, feats, n))
  return out


class Predictor:
  """Jitted, sharded `predict_batch_with_aux` / `score_batch` over seqio eval datasets
  (enumerated: `(index, features)` elements, as `seqio.Evaluator` gives them)."""

  def __init__(self, model, mesh, rules, param_shardings, batch_size: int,
               bucket: bool = True):
    self.model, self.mesh, self.rules = model, mesh, list(rules)
    self.bucket = bucket  # sort rows by length and cut padding (same results)
    data_size = mesh.shape[partitioning.DATA_AXIS]
    if batch_size % data_size:
      batch_size += data_size - batch_size % data_size
    self.batch_size = batch_size
    dsh = partitioning.data_sharding(mesh)

    def predict(params, batch, rng):
      tokens, aux = model.predict_batch_with_aux(params, batch, rng)
      return tokens, aux['scores']
    self._predict = jax.jit(predict, in_shardings=(param_shardings, dsh, None),
                            out_shardings=(dsh, dsh))
    self._score = jax.jit(model.score_batch, in_shardings=(param_shardings, dsh),
                          out_shardings=dsh)

  def _run(self, fn: Callable, ds: tf.data.Dataset, keys: Sequence[str],
           trim: Sequence[Sequence[str]] = ()) -> list:
    from flax import linen as nn  # pylint: disable=g-import-not-at-top
    results = []
    for idx, feats, n in _padded_batches(ds, self.batch_size, trim if self.bucket else ()):
      batch = _to_global({k: feats[k] for k in keys if k in feats}, self.mesh)
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
        out = jax.tree.map(_gather, fn(batch))
      rows = (list(zip(*(x[:n].tolist() for x in out))) if isinstance(out, tuple)
              else out[:n].tolist())
      results.extend(zip(idx[:n].tolist(), rows))
    return sorted(results, key=lambda r: r[0])

  def predict_with_aux_fn(self, params: Any, rng: Optional[jax.Array] = None):
    """ds -> [(index, (tokens, sequence log-prob))].

    The features fed and the groups cut to the longest real row are the
    model's `PREDICT_FEATURES` / `PREDICT_TRIM` (decoder-only models); by
    default the encoder-decoder ones (only the encoder is cut: the decoder
    length is the decode length)."""
    keys = getattr(self.model, 'PREDICT_FEATURES',
                   ('encoder_input_tokens', 'decoder_target_tokens', 'decoder_input_tokens'))
    trim = getattr(self.model, 'PREDICT_TRIM', (('encoder_input_tokens',),))
    return lambda ds: self._run(lambda b: self._predict(params, b, rng), ds, keys, trim)

  def predict_fn(self, params: Any, rng: Optional[jax.Array] = None):
    """ds -> [(index, tokens)] (seqio's `predict_fn`)."""
    predict = self.predict_with_aux_fn(params, rng)
    return lambda ds: [(i, tokens) for i, (tokens, _) in predict(ds)]

  def score_fn(self, params: Any):
    """ds -> [(index, summed target log-prob)] (seqio's `score_fn`); features as
    `predict_with_aux_fn` (the model's `SCORE_FEATURES` / `SCORE_TRIM`)."""
    keys = getattr(self.model, 'SCORE_FEATURES',
                   ('encoder_input_tokens', 'decoder_target_tokens', 'decoder_input_tokens',
                    'decoder_loss_weights'))
    trim = getattr(self.model, 'SCORE_TRIM', (
        ('encoder_input_tokens',),
        ('decoder_target_tokens', 'decoder_input_tokens', 'decoder_loss_weights')))
    return lambda ds: self._run(lambda b: self._score(params, b), ds, keys, trim)


_INIT_SHAPES = {'encoder_input_tokens': (1, 8), 'decoder_input_tokens': (1, 8),
                'decoder_target_tokens': (1, 8)}


def load_predictor(model, checkpoint_path: str, batch_size: int,
                   mesh_config: Optional[partitioning.MeshConfig] = None
                   ) -> tuple[Predictor, Any]:
  """(Predictor, params) of the checkpoint at `checkpoint_path` (a run / T5X model
  dir: its latest step; a step dir; a Hugging Face dir), sharded on a new mesh."""
  ckpt_lib.require_checkpoint(checkpoint_path)
  mesh_config = mesh_config or partitioning.MeshConfig()
  mesh = partitioning.create_mesh(mesh_config)
  rules = mesh_config.logical_axis_rules()
  abstract, shardings = ts_lib.state_shardings(model, _INIT_SHAPES, mesh, rules)
  params = ckpt_lib.load_params(checkpoint_path, abstract.params, shardings.params)
  return Predictor(model, mesh, rules, shardings.params, batch_size), params


def checkpoint_step(checkpoint_path: str) -> int:
  """The step of the checkpoint read from `checkpoint_path`, parsed from a step
  directory name (`<N>` or `checkpoint_<N>`); -1 if unknown (e.g. Hugging Face)."""
  step_dir = ckpt_lib.find_step_dir(checkpoint_path)
  if step_dir is None:
    return -1
  step = ckpt_lib.step_from_dir_name(os.path.basename(os.path.normpath(step_dir)))
  return -1 if step is None else step


def make_evaluator(cfg: EvalConfig, log_dir: Optional[str] = None,
                   model: Any = None) -> seqio.Evaluator:
  """The seqio Evaluator of `cfg`; with `model`, its converter class goes through
  the model's `converter_for` (a decoder-only model maps the encoder-decoder
  default to its own)."""
  input_pipeline.import_task_module(cfg.module)
  converter_cls = cfg.feature_converter_cls
  if model is not None and hasattr(model, 'converter_for'):
    converter_cls = model.converter_for(converter_cls)
  return seqio.Evaluator(
      mixture_or_task_name=cfg.mixture_or_task_name,
      feature_converter=converter_cls(pack=False),
      eval_split=cfg.split, use_cached=cfg.use_cached, seed=cfg.seed,
      sequence_length=dict(cfg.task_feature_lengths) if cfg.task_feature_lengths else None,
      num_examples=cfg.num_examples, shuffle=False, log_dir=log_dir,
      logger_cls=(), async_compute_metrics=False)


def run_inference_eval(evaluator: seqio.Evaluator, predictor: Predictor, params: Any,
                       step: int, compute_scores: bool = True) -> dict[str, Any]:
  """{task: {metric: value}} from the tasks' metric functions."""
  has_score = compute_scores and any(t.score_metric_fns for t in evaluator.eval_tasks)
  metrics, _ = evaluator.evaluate(
      compute_metrics=jax.process_index() == 0, step=step,
      predict_fn=predictor.predict_fn(params),
      score_fn=predictor.score_fn(params) if has_score else None)
  if hasattr(metrics, 'result'):
    metrics = metrics.result()
  return metrics or {}


# ------------------------------------------------------------- student test eval
@dataclasses.dataclass(frozen=True)
class StudentEval:
  metrics: dict[str, float]
  predictions: list[dict[str, Any]]  # id, gold, generated, ranked, confidence, correct

  @property
  def confidences(self) -> np.ndarray:
    return np.array([p['confidence'] for p in self.predictions], np.float64)

  @property
  def correct(self) -> np.ndarray:
    return np.array([p['correct'] for p in self.predictions], bool)


def text(v: Any) -> Optional[str]:
  """A seqio text feature (bytes / numpy scalar) as str."""
  if v is None:
    return None
  if isinstance(v, np.ndarray):
    v = v.item() if v.ndim == 0 else v.tolist()
  return v.decode('utf-8') if isinstance(v, bytes) else v


def _candidate_rows(model_ds: tf.data.Dataset, cands: Sequence[Sequence[str]],
                    vocab: seqio.Vocabulary) -> tf.data.Dataset:
  """Enumerated model features: example i's encoder input with each of its
  candidates (+ EOS) as target, row i * width + j; short sets repeat their
  last candidate (a repeat never wins the argmax). Decoder-only rows (no
  encoder input): the example's inputs part followed by each candidate."""
  if 'encoder_input_tokens' not in model_ds.element_spec[1]:
    return _decoder_only_candidate_rows(model_ds, cands, vocab)
  enc = dict(model_ds.map(lambda i, f: (i, f['encoder_input_tokens'])).as_numpy_iterator())
  width = max(len(c) for c in cands)
  ids = [[list(vocab.encode(x)) + [vocab.eos_id] for x in c + [c[-1]] * (width - len(c))]
         for c in map(list, cands)]
  targets = np.zeros((len(cands) * width, max(len(t) for c in ids for t in c)), np.int32)
  for r, t in enumerate(t for c in ids for t in c):
    targets[r, :len(t)] = t
  feats = {'encoder_input_tokens': np.repeat(np.stack([enc[i] for i in range(len(cands))]),
                                             width, axis=0),
           'decoder_target_tokens': targets,
           'decoder_input_tokens': np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
           'decoder_loss_weights': (targets > 0).astype(np.int32)}
  return tf.data.Dataset.from_tensor_slices((np.arange(len(targets)), feats))


def _decoder_only_candidate_rows(model_ds: tf.data.Dataset, cands: Sequence[Sequence[str]],
                                 vocab: seqio.Vocabulary) -> tf.data.Dataset:
  """`_candidate_rows` for decoder-only converter rows (`inputs ++ candidate`,
  loss on the candidate; segment ids mark the real tokens, id 0 may be one)."""
  prefix_lm = 'decoder_causal_attention' in model_ds.element_spec[1]
  prompts = {}
  for i, f in model_ds.as_numpy_iterator():
    weighted = np.asarray(f['decoder_loss_weights']) > 0
    m = int(np.argmax(weighted)) + 1 if weighted.any() else len(weighted)
    # The inputs part: the fed tokens up to the one predicting the first target.
    prompts[i] = np.asarray(f['decoder_input_tokens'])[:m]
  width = max(len(c) for c in cands)
  seqs, starts = [], []
  for i, c in enumerate(map(list, cands)):
    for x in c + [c[-1]] * (width - len(c)):
      seqs.append(np.concatenate([prompts[i], list(vocab.encode(x)) + [vocab.eos_id]]))
      starts.append(len(prompts[i]))
  n = max(len(s) for s in seqs) - 1
  feats = {k: np.zeros((len(seqs), n), np.int32) for k in (
      'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights',
      'decoder_segment_ids', 'decoder_positions') + (('decoder_causal_attention',)
                                                     if prefix_lm else ())}
  for r, (s, m) in enumerate(zip(seqs, starts)):
    k = len(s) - 1
    feats['decoder_input_tokens'][r, :k] = s[:-1]
    feats['decoder_target_tokens'][r, :k] = s[1:]
    feats['decoder_loss_weights'][r, max(m - 1, 0):k] = 1
    feats['decoder_segment_ids'][r, :k] = 1
    feats['decoder_positions'][r, :k] = np.arange(k)
    if prefix_lm:
      feats['decoder_causal_attention'][r, :m] = 1
  return tf.data.Dataset.from_tensor_slices((np.arange(len(seqs)), feats))


def student_eval(evaluator: seqio.Evaluator, predict_with_aux_fn: Callable,
                 score_fn: Callable, dataset: str, *, num_bins: int = 10,
                 log: Callable[[str], None] = lambda s: None) -> StudentEval:
  """Test metrics of one label task (`evaluator` over a single seqio task).

  - generation accuracy: greedy output (after the task's postprocessor) vs the
    postprocessed target (normalised exact match; SVAMP: equal equation values);
  - rank classification over the candidate labels (NLI: the label set; CQA: the
    input's choices, `metrics.choices`): rank accuracy and calibration (ECE, MCE,
    Brier) with confidence = softmax over candidate sequence log-probs;
  - without a candidate set (SVAMP) or with a postprocessor (chain-of-thought
    outputs), confidence = exp(greedy output log-prob) against generation
    correctness.
  Accuracies are percentages; ECE/MCE/Brier lie in [0, 1].

  Args:
    predict_with_aux_fn: enumerated model ds -> [(index, (tokens, log-prob))]
      (`Predictor.predict_with_aux_fn`).
    score_fn: enumerated model ds -> [(index, summed target log-prob)]
      (`Predictor.score_fn`).
  """
  if len(evaluator.eval_tasks) != 1:
    raise ValueError('student_eval needs one task with this split and metric functions '
                     f'(what seqio.Evaluator keeps); got {[t.name for t in evaluator.eval_tasks]}')
  task = evaluator.eval_tasks[0]
  examples = list(evaluator.cached_task_datasets[task.name].as_numpy_iterator())
  if not examples:
    raise ValueError(f'no examples to evaluate in {task.name}')
  model_ds = evaluator.cached_model_datasets[task.name]
  log(f'  decoding {len(examples)} examples of {task.name}')
  outputs = dict(predict_with_aux_fn(model_ds))
  vocab = task.output_features['targets'].vocabulary
  post = task.postprocess_fn
  golds = [post(text(ex['targets_pretokenized']), example=ex, is_target=True)
           for ex in examples]
  preds = [post(vocab.decode([int(t) for t in outputs[i][0]]), example=ex, is_target=False)
           for i, ex in enumerate(examples)]
  seq_logp = np.array([float(outputs[i][1]) for i in range(len(examples))])
  gen_correct = np.array([choices.is_correct(dataset, g, p) for g, p in zip(golds, preds)])
  metrics = {'accuracy': 100.0 * float(gen_correct.mean()),
             'num_examples': float(len(examples))}
  cands = None
  if task.postprocessor is None:
    cands = [choices.candidates(dataset, text(ex['inputs_pretokenized']),
                                formats.LABELS.get(dataset)) for ex in examples]
  if cands and all(c is not None for c in cands):
    gold_idx = []
    for i, (g, c) in enumerate(zip(golds, cands)):
      norm = [accuracy.normalize_answer(x) for x in c]
      if accuracy.normalize_answer(g) not in norm:
        raise ValueError(f'example {i}: gold label {g!r} is not among its candidates {c}')
      gold_idx.append(norm.index(accuracy.normalize_answer(g)))
    log(f'  scoring {sum(map(len, cands))} candidates')
    scores = dict(score_fn(_candidate_rows(model_ds, cands, vocab)))
    width = max(len(c) for c in cands)
    res = rank_classification.rank(
        np.array([scores[r] for r in range(len(cands) * width)]).reshape(-1, width),
        gold_idx)
    conf, correct = res.confidences, res.correct
    chosen = [c[int(k)] for c, k in zip(cands, res.predictions)]
    metrics['rank_accuracy'] = 100.0 * float(correct.mean())
    metrics['brier'] = calibration.brier(res.probabilities, np.asarray(gold_idx))
    metrics['confidence_source'] = 0.0  # 0: rank classification
  else:
    conf = np.exp(np.minimum(seq_logp, 0.0))
    correct, chosen = gen_correct, preds
    metrics['confidence_source'] = 1.0  # 1: greedy sequence probability
  metrics['ece'] = calibration.ece(conf, correct, num_bins=num_bins)
  metrics['mce'] = calibration.mce(conf, correct, num_bins=num_bins)
  metrics['mean_confidence'] = float(np.mean(conf))
  predictions = [{'id': str(i), 'gold': g, 'generated': p, 'generated_correct': bool(gc),
                  'ranked': ch, 'confidence': float(c), 'correct': bool(k)}
                 for i, (g, p, gc, ch, c, k) in enumerate(
                     zip(golds, preds, gen_correct, chosen, conf, correct))]
  return StudentEval(metrics, predictions)


def validation_loss(trainer, params: Any, batches) -> dict[str, float]:
  """Teacher-forced loss / token accuracy over an iterable of local batches."""
  total_loss = total_w = correct = real = 0.0
  n = 0
  for local in batches:
    mets = jax.device_get(trainer.eval_step(params, trainer.shard_batch(local)))
    w = float(mets.get('weight_sum', 1.0))
    total_loss += float(mets['loss']) * w
    total_w += w
    correct += float(mets['correct_tokens'])
    real += float(mets['real_tokens'])
    n += 1
  if not n:
    return {}
  return {'loss': total_loss / max(total_w, 1e-9), 'accuracy': correct / max(real, 1.0)}
