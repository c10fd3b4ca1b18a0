"""Sweep bookkeeping against a stand-in trainer: skip on rerun, identical aggregate."""
import csv
import json
import pathlib
import struct
import sys

import gin
import pytest

from distill_sbs.experiments import aggregate
from distill_sbs.experiments import runs as runs_lib
from distill_sbs.experiments import sweep

FAKE = str(pathlib.Path(__file__).with_name('fake_train.py'))


def _config(tmp_path, **kw):
  base = dict(name='t', dataset='cqa', sizes=('tiny',),
              methods=('standard_finetune', 'sbs_llm'), fractions=(0.5, 1.0),
              seeds=(0, 1), train_steps=3, output_dir=str(tmp_path / 'out'),
              train_command=(sys.executable, FAKE), eval_command=(sys.executable, FAKE))
  base.update(kw)
  return sweep.SweepConfig(**base)


def _quiet(_):
  pass


def _png_size(path):
  """(width, height) from the PNG's IHDR chunk."""
  data = pathlib.Path(path).read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR', path
  return struct.unpack('>II', data[16:24])


def test_plan_commands(tmp_path):
  runs = sweep.plan(_config(tmp_path))
  assert len(runs) == 2 * 2 * 2
  r = runs[0]
  assert r.spec == runs_lib.RunSpec('cqa', 'tiny', 'standard_finetune', 0.5, 0)
  assert r.model_dir == (tmp_path / 'out/runs/cqa_tiny/standard_finetune/frac50/seed0').resolve()
  assert '--gin.MIXTURE_OR_TASK_NAME="sbs_cqa_label_gold_50pct"' in r.train_argv
  assert '--gin.TRAIN_STEPS=3' in r.train_argv and '--gin.RANDOM_SEED=0' in r.train_argv
  # The four parts, in order: model size, run, method, dataset.
  files = [a.split('=', 1)[1] for a in r.train_argv if a.startswith('--gin_file=')]
  assert [f.split('/', 1)[0] + '/' + f.rsplit('/', 1)[1] for f in
          (str(pathlib.Path(x).resolve().relative_to(sweep.REPO_ROOT)) for x in files)] == [
              't5x_configs/tiny.gin', 'gin/cpu.gin', 'gin/standard_finetune.gin', 'gin/cqa.gin']
  assert r.task == 'sbs_cqa_label_gold_50pct' and r.test_task == 'sbs_cqa_label_gold'
  full = [x for x in runs if x.spec.fraction == 1.0 and x.spec.method == 'sbs_llm']
  # At the full data the task is the method part's own (no override).
  assert not any('MIXTURE_OR_TASK_NAME' in a for a in full[0].train_argv)
  assert full[0].task == 'sbs_cqa_paired_llm' and full[0].test_task == 'sbs_cqa_predict_gold'
  assert any(a.endswith('gin/methods/sbs_llm.gin') for a in full[0].train_argv)
  # Signatures hash the configuration (method, fraction task, steps); the seed
  # and run dir are in the spec.
  assert len({x.signature for x in runs}) == 4  # methods x fractions
  assert runs[0].signature == runs[1].signature


def test_sweep_skips_finished_runs_and_aggregates_identically(tmp_path, monkeypatch):
  calls = tmp_path / 'calls.txt'
  monkeypatch.setenv('FAKE_TRAIN_CALLS', str(calls))
  config = _config(tmp_path)
  status = sweep.execute(config, runner=lambda a, p, **kw: sweep.subprocess_runner(a, p, echo=_quiet, **kw),
                         log=_quiet)
  assert len(status['ran']) == 8 and not status['skipped']
  assert len(calls.read_text().splitlines()) == 8  # trainings (evals are not logged)
  paths = sweep.write_outputs(config)
  first = {k: p.read_bytes() for k, p in paths.items()}
  for name in ('results.csv', 'summary.csv', 'accuracy_vs_fraction.png',
               'training_curves.png', 'reliability.png', 'report.md'):
    assert (config.out_dir / name).stat().st_size > 0

  with open(paths['results']) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8  # one row per run
  r0 = [r for r in rows if r['method'] == 'sbs_llm' and r['fraction'] == '1.0'
        and r['seed'] == '1'][0]
  assert float(r0['eval/accuracy']) == pytest.approx(0.65)
  assert float(r0['loss']) == pytest.approx(1 / 3) and r0['final_step'] == '3'
  assert float(r0['learning_rate']) == 0.01
  assert float(r0['test_accuracy']) == 41.0 and float(r0['test_ece']) == pytest.approx(0.12)
  assert float(r0['test_task_is_sbs_cqa_predict_gold']) == 1.0
  assert set(rows[0]) == {'dataset', 'size', 'method', 'fraction', 'seed', 'final_step',
                          'loss', 'learning_rate', 'eval/accuracy', 'test_accuracy', 'test_ece',
                          'test_task_is_sbs_cqa_label_gold', 'test_task_is_sbs_cqa_predict_gold',
                          'train_seconds', 'eval_seconds'}

  summary = aggregate.read_csv(paths['summary'])
  s = [r for r in summary if r['method'] == 'sbs_llm' and r['fraction'] == 1.0][0]
  assert s['n_seeds'] == 2
  assert s['eval/accuracy_mean'] == pytest.approx(0.6)  # (0.55 + 0.65) / 2
  assert s['eval/accuracy_std'] == pytest.approx(0.1 / 2 ** 0.5)  # sample std
  assert s['test_accuracy_mean'] == 40.5
  # ECE per seed is 0.1 + 0.02 * seed: mean (0.10 + 0.12) / 2, sample std 0.02 / sqrt(2).
  assert s['test_ece_mean'] == pytest.approx(0.11)
  assert s['test_ece_std'] == pytest.approx(0.02 / 2 ** 0.5)
  for r in summary:
    per_run = [float(x['test_ece']) for x in rows if (x['method'], float(x['fraction'])) ==
               (r['method'], r['fraction'])]
    assert len(per_run) == 2 and r['test_ece_mean'] == pytest.approx(sum(per_run) / 2)
  # Accuracy and ECE side by side right after the spec columns.
  header = paths['summary'].read_text().splitlines()[0].split(',')
  assert header[:10] == ['dataset', 'size', 'method', 'fraction', 'n_seeds',
                         'test_accuracy_mean', 'test_accuracy_std', 'test_ece_mean',
                         'test_ece_std', 'eval/accuracy_mean']
  text = paths['report'].read_text()
  assert '| size | method | fraction | n_seeds | test_accuracy | test_ece |' in text
  assert '| tiny | sbs_llm | 100% | 2 | 40.5000 ± 0.7071 | 0.1100 ± 0.0141 |' in text
  assert '| tiny | standard_finetune | 50% | 2 | 40.5000 ± 0.7071 | 0.1100 ± 0.0141 |' in text
  # Reliability diagrams: one 3.8-inch panel (110 dpi) per method, embedded.
  assert paths['reliability'] == config.out_dir / 'reliability.png'
  assert _png_size(paths['reliability'])[0] == round(2 * 3.8 * 110)
  assert '![reliability diagrams](reliability.png)' in text
  assert 'Reliability diagrams (tiny, 100% data, seed 0' in text and 'Skipped' not in text
  panels, ece, missing = sweep.reliability_panels(
      config, [(r.spec, r.model_dir) for r in sweep.plan(config)],
      aggregate.collect([(r.spec, r.model_dir) for r in sweep.plan(config)]))
  assert list(panels) == ['standard_finetune', 'sbs_llm'] and not missing
  assert ece == {'standard_finetune': pytest.approx(0.1), 'sbs_llm': pytest.approx(0.1)}
  conf, correct = panels['sbs_llm']
  assert conf.tolist() == pytest.approx([(i + 0.5) / 10 for i in range(10)])
  assert correct.tolist() == [True] * 5 + [False] * 5  # seed 0

  # Rerun: nothing trains again, outputs are byte-identical.
  status = sweep.execute(config, runner=lambda a, p, **kw: sweep.subprocess_runner(a, p, echo=_quiet, **kw),
                         log=_quiet)
  assert not status['ran'] and len(status['skipped']) == 8
  assert len(calls.read_text().splitlines()) == 8
  paths2 = sweep.write_outputs(config)
  for k in ('results', 'summary', 'report', 'reliability'):
    assert paths2[k].read_bytes() == first[k], k

  # A run without predictions is left out of the diagrams, with a note.
  no_pred = config.out_dir / 'runs/cqa_tiny/standard_finetune/frac100/seed0'
  (no_pred / 'test_predictions.jsonl').unlink()
  paths3 = sweep.write_outputs(config)
  assert _png_size(paths3['reliability'])[0] == round(3.8 * 110)
  assert ('Skipped (no `test_predictions.jsonl`): `cqa_tiny/standard_finetune/frac100/seed0`.'
          in paths3['report'].read_text())
  assert paths3['summary'].read_bytes() == first['summary']


def test_partial_sweep_resumes_only_missing_runs(tmp_path, monkeypatch):
  calls = tmp_path / 'calls.txt'
  monkeypatch.setenv('FAKE_TRAIN_CALLS', str(calls))
  monkeypatch.setenv('FAKE_TRAIN_FAIL', 'sbs_cqa_paired_llm')
  config = _config(tmp_path, keep_going=True)
  runner = lambda a, p, **kw: sweep.subprocess_runner(a, p, echo=_quiet, **kw)
  status = sweep.execute(config, runner=runner, log=_quiet)
  assert len(status['failed']) == 4 and len(status['ran']) == 4
  assert 'boom' in (config.out_dir / 'runs/cqa_tiny/sbs_llm/frac100/seed0/train.log').read_text()
  with pytest.raises(RuntimeError, match='exit 3'):
    sweep.execute(_config(tmp_path), runner=runner, log=_quiet)
  monkeypatch.delenv('FAKE_TRAIN_FAIL')
  calls.write_text('')
  status = sweep.execute(config, runner=runner, log=_quiet)
  assert len(status['ran']) == 4 and len(status['skipped']) == 4
  assert sorted(calls.read_text().split('\n')[:-1]) == [
      'sbs_cqa_paired_llm 0', 'sbs_cqa_paired_llm 1', 'sbs_cqa_paired_llm_50pct 0',
      'sbs_cqa_paired_llm_50pct 1']


def test_changed_config_refuses_to_mix(tmp_path):
  config = _config(tmp_path, methods=('standard_finetune',), fractions=(1.0,), seeds=(0,))
  sweep.execute(config, runner=lambda a, p, **kw: sweep.subprocess_runner(a, p, echo=_quiet, **kw), log=_quiet)
  changed = _config(tmp_path, methods=('standard_finetune',), fractions=(1.0,), seeds=(0,),
                    train_steps=5)
  with pytest.raises(ValueError, match='another configuration'):
    sweep.execute(changed, runner=lambda a, p, **kw: None, log=_quiet)


def test_gin_config_and_cli_parsing(tmp_path):
  gin_file = tmp_path / 'x.gin'
  gin_file.write_text(
      "SweepConfig.name = 'x'\nSweepConfig.dataset = 'svamp'\n"
      "SweepConfig.fractions = [0.125, 1.0]\nSweepConfig.seeds = [0, 1, 2]\n"
      "SweepConfig.method_overrides = {'sbs_llm': {'bindings': ['BATCH_SIZE=4']}}\n")
  args, bindings = sweep.parse_args([f'--gin_file={gin_file}', '--gin.SweepConfig.train_steps=7'])
  with gin.unlock_config():
    gin.clear_config()
    config = sweep.load_config(args.gin_file, bindings)
  gin.clear_config()
  assert config.fractions == (0.125, 1.0) and config.seeds == (0, 1, 2)
  assert config.train_steps == 7 and config.dataset == 'svamp'
  runs = sweep.plan(config)
  assert len(runs) == 2 * 2 * 3
  sbs = [r for r in runs if r.spec.method == 'sbs_llm'][0]
  assert '--gin.BATCH_SIZE=4' in sbs.train_argv
  assert '--gin.MIXTURE_OR_TASK_NAME="sbs_svamp_paired_llm_12p5pct"' in sbs.train_argv


def test_bad_configs_raise_clear_errors(tmp_path):
  with pytest.raises(ValueError, match=r'\(0, 1\]'):
    _config(tmp_path, fractions=(0.0,))
  with pytest.raises(ValueError, match='unknown method'):
    _config(tmp_path, methods=('nope',))
  with pytest.raises(ValueError, match='KEY=VALUE'):
    _config(tmp_path, bindings=('BATCH_SIZE',))


def test_train_progress_reads_metrics(tmp_path):
  status = sweep.train_progress(tmp_path, 100)
  assert status().startswith('starting')
  long_rec = {'step': 10, 'loss': 2.5, **{f'metric_{i}': 0.123456 for i in range(20)}}
  (tmp_path / 'metrics.jsonl').write_text(json.dumps(long_rec) + '\n')
  assert status() == 'step 10/100 (10%) loss 2.500'
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write(json.dumps({'step': 20, 'loss': 2.0}) + '\n')
  assert status().startswith('step 20/100 (20%) loss 2.000, ETA ')


@pytest.mark.parametrize('ds', ['cqa', 'svamp', 'esnli', 'anli1'])
def test_experiment_gins_plan_existing_gin_files(ds):
  for files, name, sizes, n_methods in [
      ([f'{ds}_tiny'], f'{ds}_tiny', ('tiny',), 5),
      ([f'{ds}_tiny', 'with_first'], f'{ds}_tiny', ('tiny',), 7),
      ([f'{ds}_base'], f'{ds}_base', ('small', 'base'), 5)]:
    with gin.unlock_config():
      gin.clear_config()
      config = sweep.load_config([f'gin/experiments/{f}.gin' for f in files], [])
    gin.clear_config()
    assert config.name == name and config.dataset == ds and config.sizes == sizes
    runs = sweep.plan(config)
    assert len(runs) == len(sizes) * n_methods * 5 * 3
    for r in runs:
      for a in r.train_argv:
        if a.startswith('--gin_file='):
          assert pathlib.Path(a.split('=', 1)[1]).exists(), a
    # A comparison of methods differs only in the method: same budget and inputs.
    from distill_sbs.training import gin_macros  # pylint: disable=g-import-not-at-top
    for size in sizes:
      shared = set()
      for r in runs:
        if r.spec.size == size:
          m = gin_macros.read_macros(r.gin_files, [a[len('--gin.'):] for a in r.train_argv
                                                   if a.startswith('--gin.')])
          shared.add((m['TRAIN_STEPS'], m['BATCH_SIZE'], m['LEARNING_RATE'],
                      m['TASK_FEATURE_LENGTHS']['inputs'], m['EVAL_PERIOD']))
      assert len(shared) == 1, (name, size, shared)
    if name.endswith('_base'):
      assert "--gin.INITIAL_CHECKPOINT_PATH='checkpoints/t5-v1_1-small'" in runs[0].train_argv
      assert '--gin.distill_sbs.experiments.evaluate.run_student_eval.model=%MODEL' in \
          runs[0].eval_argv
