"""Units of the experiments package: metrics I/O, aggregation, plots, data fetch."""
import json
import pathlib
import subprocess
import zipfile

import numpy as np
import pytest

from distill_sbs.experiments import aggregate
from distill_sbs.experiments import data_fetch
from distill_sbs.experiments import plots
from distill_sbs.experiments import report
from distill_sbs.experiments import runs as runs_lib

PNG = b'\x89PNG\r\n\x1a\n'


def _write_metrics(path, records, tail=''):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(json.dumps(r) + '\n' for r in records) + tail)


def test_read_metrics_tolerates_truncated_tail_only(tmp_path):
  p = tmp_path / 'metrics.jsonl'
  _write_metrics(p, [{'step': 1, 'loss': 2.0}, {'step': 2, 'loss': 1.0}], tail='{"step": 3, "lo')
  assert [r['step'] for r in runs_lib.read_metrics(p)] == [1, 2]
  p.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl:2: not JSON'):
    runs_lib.read_metrics(p)
  p.write_text('{"loss": 1}\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r':1: expected a JSON object with a "step"'):
    runs_lib.read_metrics(p)


def test_run_row_takes_last_values_and_eval_results(tmp_path):
  d = tmp_path / 'run'
  _write_metrics(d / 'metrics.jsonl', [
      {'step': 10, 'loss': 3.0, 'accuracy': 0.1, 'tokens_per_sec': 100.0},
      {'step': 20, 'loss': 2.0, 'accuracy': 0.2, 'eval/sbs_cqa_label_gold/accuracy': 31.0},
      {'step': 30, 'loss': 1.5, 'accuracy': float('nan'), 'note': 'text'}])
  (d / 'eval_results.json').write_text(json.dumps({'accuracy': 40.0, 'ece': 0.12, 'name': 'x'}))
  spec = runs_lib.RunSpec('cqa', 'tiny', 'sbs_gold', 0.25, 1)
  row = aggregate.run_row(spec, d)
  assert row == {'dataset': 'cqa', 'size': 'tiny', 'method': 'sbs_gold', 'fraction': 0.25,
                 'seed': 1, 'final_step': 30, 'loss': 1.5, 'accuracy': 0.2,
                 'tokens_per_sec': 100.0, 'eval/sbs_cqa_label_gold/accuracy': 31.0,
                 'test_accuracy': 40.0, 'test_ece': 0.12}


def test_mean_std_and_summary_hand_values():
  assert aggregate.mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, np.std([1, 2, 4], ddof=1)))
  assert aggregate.mean_std([5.0]) == (5.0, 0.0)
  rows = [{'dataset': 'd', 'size': 's', 'method': m, 'fraction': f, 'seed': s, 'acc': v}
          for m, f, s, v in [('a', 1.0, 0, 10.0), ('a', 1.0, 1, 14.0), ('a', 0.5, 0, 7.0),
                             ('b', 1.0, 0, 20.0)]]
  summary = aggregate.summarize(rows)
  assert [(r['method'], r['fraction'], r['n_seeds']) for r in summary] == [
      ('a', 0.5, 1), ('a', 1.0, 2), ('b', 1.0, 1)]
  assert summary[1]['acc_mean'] == 12.0
  assert summary[1]['acc_std'] == pytest.approx(2 * 2 ** 0.5)


def test_csv_roundtrip_is_deterministic(tmp_path):
  rows = [{'dataset': 'd', 'size': 's', 'method': 'a', 'fraction': 0.125, 'seed': 0,
           'loss': 0.1 + 0.2, 'x': 1.0}, {'dataset': 'd', 'size': 's', 'method': 'b',
                                          'fraction': 1.0, 'seed': 0, 'loss': 2.0}]
  p1 = aggregate.write_csv(rows, tmp_path / 'a.csv')
  p2 = aggregate.write_csv(list(rows), tmp_path / 'b.csv')
  assert p1.read_bytes() == p2.read_bytes()
  lines = p1.read_text().splitlines()
  assert lines[0] == 'dataset,size,method,fraction,seed,loss,x'
  assert lines[1] == 'd,s,a,0.125,0,0.30000000000000004,1.0'
  assert lines[2] == 'd,s,b,1.0,0,2.0,'
  back = aggregate.read_csv(p1)
  assert back[0]['loss'] == 0.1 + 0.2 and 'x' not in back[1]


def test_plots_write_pngs(tmp_path):
  recs = [{'step': s, 'loss': 1 / s, 'accuracy': s / 10} for s in range(1, 6)]
  summary = [{'dataset': 'cqa', 'size': sz, 'method': m, 'fraction': f, 'n_seeds': 2,
              'test_accuracy_mean': 30 + 10 * f + (5 if m == 'sbs' else 0),
              'test_accuracy_std': 1.0}
             for sz in ('tiny', 'small') for m in ('ft', 'sbs') for f in (0.125, 0.5, 1.0)]
  paths = [
      plots.plot_training_curves({'ft': recs, 'sbs': recs}, tmp_path / 'c.png'),
      plots.plot_metric_by_method(summary[:3], tmp_path / 'm.png'),
      plots.plot_metric_vs_fraction(summary, tmp_path / 'f.png'),
      plots.plot_metric_vs_size(summary, tmp_path / 's.png', ['tiny', 'small']),
      plots.plot_reliability({'ft': ([0.9, 0.2, 0.6], [1, 0, 0])}, tmp_path / 'r.png',
                             ece={'ft': 0.3}),
  ]
  for p in paths:
    assert p.read_bytes()[:8] == PNG and p.stat().st_size > 2000
  with pytest.raises(ValueError, match='no run holds'):
    plots.plot_training_curves({'x': [{'step': 1}]}, tmp_path / 'x.png')


def test_markdown_and_text_tables():
  rows = [{'method': 'ft', 'acc_mean': 0.5, 'acc_std': 0.25, 'n_seeds': 2},
          {'method': 'sbs', 'acc': 0.75}]
  cell = lambda r, c: report.mean_std_cell(r, c, 2) if c == 'acc' else str(r[c])
  md = report.markdown_table(rows, ['method', 'acc'], cell=cell)
  assert md.splitlines() == ['| method | acc |', '|---|---|', '| ft | 0.50 ± 0.25 |',
                             '| sbs | 0.75 |']
  txt = report.text_table(rows, ['method', 'acc'], cell=cell)
  assert txt.splitlines()[2] == 'ft      0.50 ± 0.25'


def _zip_layout(tmp_path):
  src = tmp_path / 'src' / 'datasets' / 'svamp'
  src.mkdir(parents=True)
  (src / 'svamp_test.json').write_text('{"input": "a", "label": "( 1 + 1 )"}\n')
  archive = tmp_path / 'datasets.zip'
  with zipfile.ZipFile(archive, 'w') as zf:
    zf.write(src / 'svamp_test.json', 'datasets/svamp/svamp_test.json')
  sha = subprocess.run(['git', 'hash-object', str(archive)], capture_output=True,
                       text=True, check=True).stdout.strip()
  return archive, sha


def test_resolve_raw_dir_order_and_download(tmp_path):
  log = []
  shared = tmp_path / 'shared'
  (shared / 'cqa').mkdir(parents=True)
  env_dir = tmp_path / 'env' / 'unzipped'
  (env_dir / 'cqa').mkdir(parents=True)
  # 1. env var (a parent folder of the layout is accepted too)
  assert data_fetch.resolve_raw_dir('cqa', env={'DISTILL_SBS_RAW_DIR': str(tmp_path / 'env')},
                                    shared_dir=shared, log=log.append) == env_dir
  with pytest.raises(data_fetch.DataUnavailableError, match='does not hold a svamp/'):
    data_fetch.resolve_raw_dir('svamp', env={'DISTILL_SBS_RAW_DIR': str(env_dir)},
                               shared_dir=shared, log=log.append)
  # 2. the shared copy
  assert data_fetch.resolve_raw_dir('cqa', env={}, shared_dir=shared, log=log.append) == shared
  # 3./4. download (file:// URL), checksum-verified by git's blob SHA-1, then cached
  archive, sha = _zip_layout(tmp_path)
  assert data_fetch.git_blob_sha1(archive) == sha
  cache = tmp_path / 'cache'
  got = data_fetch.resolve_raw_dir('svamp', env={}, shared_dir=tmp_path / 'none',
                                   cache_dir=cache, url=archive.as_uri(),
                                   expected_git_sha1=sha, log=log.append)
  assert (got / 'svamp' / 'svamp_test.json').read_text().startswith('{"input"')
  assert data_fetch.resolve_raw_dir('svamp', env={}, shared_dir=tmp_path / 'none',
                                    cache_dir=cache, url='http://127.0.0.1:9/x.zip',
                                    log=log.append) == got


def test_download_checksum_mismatch_and_offline_message(tmp_path):
  archive, _ = _zip_layout(tmp_path)
  with pytest.raises(data_fetch.DataUnavailableError, match='checksum mismatch'):
    data_fetch.download_archive(tmp_path / 'c' / 'd.zip', url=archive.as_uri(),
                                expected_git_sha1='0' * 40, log=lambda s: None)
  assert not (tmp_path / 'c' / 'd.zip').exists()
  assert not list((tmp_path / 'c').glob('*.part'))
  with pytest.raises(data_fetch.DataUnavailableError,
                     match='seem to be offline.*DISTILL_SBS_RAW_DIR'):
    data_fetch.resolve_raw_dir('cqa', env={}, shared_dir=tmp_path / 'none',
                               cache_dir=tmp_path / 'cache2', url='http://127.0.0.1:9/x.zip',
                               timeout=5, log=lambda s: None)


def test_demo_without_data_exits_with_a_clear_message(tmp_path, monkeypatch, capsys):
  from distill_sbs.experiments import demo
  monkeypatch.setenv('DISTILL_SBS_RAW_DIR', str(tmp_path / 'missing'))
  rc = demo.main([f'--work_dir={tmp_path / "w"}', f'--report_dir={tmp_path / "r"}'])
  assert rc == 2
  err = capsys.readouterr().err
  assert 'DISTILL_SBS_RAW_DIR' in err and 'does not hold a esnli/ folder' in err
  assert not (tmp_path / 'r').exists()


def test_demo_flags():
  from distill_sbs.experiments import demo
  cfg, fresh = demo.parse_args(['--dataset=cqa', '--train_steps=7', '--methods=sbs_gold',
                                '--max_test_examples=0', '--fresh'])
  assert (cfg.dataset, cfg.train_steps, cfg.methods, cfg.max_test_examples, fresh) == (
      'cqa', 7, ('sbs_gold',), 0, True)
  assert demo.parse_args([])[0] == demo.DemoConfig()
