"""A shortened demo end to end: real data, real trainer and evaluator subprocesses."""
import csv
import json
import os

from distill_sbs.experiments import demo
from distill_sbs.experiments import runs as runs_lib

PNG = b'\x89PNG\r\n\x1a\n'


def test_short_demo_writes_every_report_file(tmp_path, raw_dir, monkeypatch):
  monkeypatch.setenv('DISTILL_SBS_RAW_DIR', str(raw_dir))
  before = {k: os.environ.get(k) for k in ('DISTILL_SBS_DATA_DIR', 'DISTILL_SBS_SPM_PATH')}
  cfg = demo.DemoConfig(dataset='esnli', train_steps=4, batch_size=8, input_length=48,
                        target_length=24, label_length=4, vocab_size=400,
                        max_train_examples=150, max_test_examples=16,
                        work_dir=str(tmp_path / 'work'), report_dir=str(tmp_path / 'report'))
  lines = []
  path = demo.run_demo(cfg, log=lines.append)
  out = tmp_path / 'report'
  assert path == out / 'report.md'
  for name in ('training_curves.png', 'accuracy_by_method.png', 'reliability.png'):
    assert (out / name).read_bytes()[:8] == PNG, name
  text = path.read_text()
  for m in cfg.methods:
    assert f'| {m} |' in text
  assert 'ECE' in text and '![reliability diagrams](reliability.png)' in text
  # Progress for every stage, and the table printed at the end.
  joined = '\n'.join(lines)
  for stage in ('[1/5] data', '[2/5] vocabulary', '[3/5] train + evaluate',
                '[4/5] train + evaluate', '[5/5] report'):
    assert stage in joined
  assert 'standard_finetune' in lines[-1] and 'accuracy %' in lines[-1]
  assert {k: os.environ.get(k) for k in before} == before  # environment restored

  with open(out / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['method'] for r in rows] == ['sbs_gold', 'standard_finetune']  # one per run
  for r in rows:
    run_dir = tmp_path / 'work/sweep/runs/esnli_tiny' / r['method'] / 'frac100/seed0'
    records = runs_lib.read_metrics(run_dir / 'metrics.jsonl')
    assert max(rec['step'] for rec in records) == 4 == int(r['final_step'])
    for key, value in runs_lib.last_values(records).items():  # every metrics.jsonl key
      if key != 'step':
        assert float(r[key]) == value, key
    results = json.loads((run_dir / 'eval_results.json').read_text())
    assert float(r['test_accuracy']) == results['accuracy']
    assert 0.0 <= float(r['test_ece']) <= 1.0 and float(r['test_num_examples']) == 16
    assert float(r['train_seconds']) > 0
    n_pred = len((run_dir / 'test_predictions.jsonl').read_text().splitlines())
    assert n_pred == 16
  # A rerun reuses both finished runs (no training) and rewrites the same CSV.
  first_csv = (out / 'results.csv').read_bytes()
  lines.clear()
  demo.run_demo(cfg, log=lines.append)
  assert sum('finished earlier, skipped' in l for l in lines) == 2
  assert (out / 'results.csv').read_bytes() == first_csv
