"""Rank-classification SeqIO tasks: candidate expansion and the score metric via
`seqio.Evaluator` (the path the trainer's evaluation takes)."""
import numpy as np
import pytest
import seqio

from distill_sbs.data import formats, schema
from distill_sbs.metrics import calibration
from distill_sbs.metrics import rank_classification as rc
from distill_sbs.tasks import first

VOCAB = seqio.ByteVocabulary(extra_ids=100)


def test_score_metric_groups_rows_by_example():
  targets = [(0, 0, False), (0, 1, True), (1, 1, False), (1, 0, True)]
  scores = [-1.0, -2.0, -0.5, -3.0]
  out = rc.rank_classification_metrics(targets, scores, num_bins=5)
  probs = np.array([[np.exp(-1), np.exp(-2)], [np.exp(-3), np.exp(-0.5)]])
  probs /= probs.sum(1, keepdims=True)
  assert out['accuracy'] == 0.0
  assert out['brier'] == pytest.approx(calibration.brier(probs, [1, 0]))
  assert out['ece'] == pytest.approx(calibration.ece(probs.max(1), [0, 0], num_bins=5))
  assert out['num_skipped'] == 0
  # Incomplete (cut) examples and examples without a correct candidate are skipped.
  more = targets + [(2, 0, False), (2, 1, False), (3, 0, True)]
  out2 = rc.rank_classification_metrics(more, scores + [0.0, 0.0, 0.0], num_bins=5)
  assert out2['num_skipped'] == 2 and out2['brier'] == out['brier']
  with pytest.raises(ValueError, match='complete candidate set'):
    rc.rank_classification_metrics([(0, 0, False), (0, 1, False)], [0.0, 0.0])


def _evaluate(task, split='validation'):
  evaluator = seqio.Evaluator(
      mixture_or_task_name=task, feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=split, sequence_length={'inputs': 128, 'targets': 16}, shuffle=False,
      logger_cls=(), use_memory_cache=True)
  rows = []

  def score_fn(ds):  # a fake model: prefers short candidates (fewer target tokens)
    out = []
    for idx, feats in ds.as_numpy_iterator():
      s = -float(np.sum(feats['decoder_target_tokens'] > 0))
      rows.append(s)
      out.append((int(idx), s))
    return out

  metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=None, score_fn=score_fn)
  metrics = metrics.result() if hasattr(metrics, 'result') else metrics
  return metrics[task], rows


def test_rank_tasks_expand_and_report_calibration(tmp_path):
  esnli = [{'premise': f'p{i}', 'hypothesis': f'h{i}', 'label': i % 3} for i in range(4)]
  recs = [{'id': f'e{i}', 'inputs': formats.format_input('esnli', r),
           'label': formats.gold_label('esnli', r)} for i, r in enumerate(esnli)]
  schema.write_shards(str(tmp_path / 'esnli'), 'validation', recs)
  first.register_rank_tasks('esnli', records_dir=str(tmp_path / 'esnli'), vocabulary=VOCAB,
                            prefix='rank_test')  # `rank_esnli` is registered at import
  rows = list(seqio.get_mixture_or_task('rank_test_esnli_predict').get_dataset(
      {'inputs': 128, 'targets': 16}, split='validation', shuffle=False).as_numpy_iterator())
  assert len(rows) == 12  # 4 examples × 3 labels
  assert rows[0]['inputs_pretokenized'].decode().startswith('predict: Premise: p0')
  assert [r['is_correct'] for r in rows[:3]] == [True, False, False]  # label 0 = entailment
  m, scores = _evaluate('rank_test_esnli')
  # Hand computation: softmax over −len(label)+1 (EOS) per example, same for all.
  lens = np.array([len(l) + 1 for l in formats.NLI_LABELS], float)
  p = np.exp(-lens) / np.exp(-lens).sum()  # 'neutral' (shortest) wins with p.max()
  gold = np.array([r['label'] for r in esnli])
  assert m['accuracy'] == pytest.approx(100 * np.mean(gold == 1))
  assert m['ece'] == pytest.approx(calibration.ece(np.full(4, p.max()), gold == 1))
  assert m['brier'] == pytest.approx(calibration.brier(np.tile(p, (4, 1)), gold))


def test_cqa_candidates_come_from_the_input_choices(tmp_path):
  row = {'question': 'Where?', 'choices': ['a bank', 'park', 'the zoo', 'sea', 'a big house'],
         'answer': 'the zoo'}
  rec = {'id': 'c0', 'inputs': formats.format_input('cqa', row), 'label': row['answer']}
  schema.write_shards(str(tmp_path), 'test', [rec])
  first.register_rank_tasks('cqa', records_dir=str(tmp_path), vocabulary=VOCAB,
                            prefix='rank_test')
  rows = list(seqio.get_mixture_or_task('rank_test_cqa').get_dataset(
      {'inputs': 128, 'targets': 16}, split='test', shuffle=False).as_numpy_iterator())
  assert [r['targets_pretokenized'].decode() for r in rows] == row['choices']
  assert [bool(r['is_correct']) for r in rows] == [False, False, True, False, False]
  assert [tuple(r['idx']) for r in rows] == [(0, j) for j in range(5)]
  m, _ = _evaluate('rank_test_cqa', split='test')
  assert m['accuracy'] == 0.0  # the fake model picks 'sea' (shortest)
  with pytest.raises(ValueError, match='closed label set'):
    first.register_rank_tasks('svamp')
