"""A sweep over T5 and decoder-only students: composition, run ids, plot labels."""
import matplotlib

from distill_sbs.experiments import plots
from distill_sbs.experiments import sweep

PNG = b'\x89PNG\r\n\x1a\n'


def test_mixed_family_sweep_plans_each_student(tmp_path):
  cfg = sweep.SweepConfig(name='mix', dataset='cqa', sizes=('t5_1_1/tiny', 'qwen3/tiny'),
                          methods=('standard_finetune', 'sbs_llm'), fractions=(1.0,),
                          model_gin='t5x_configs/models/{size}.gin',
                          output_dir=str(tmp_path))
  runs = sweep.plan(cfg)
  assert len(runs) == 4
  by_size = {}
  for r in runs:
    by_size.setdefault(r.spec.size, []).append(r)
    assert '/' not in r.spec.run_id.split('/')[0]          # one folder per size
    assert r.model_dir.is_relative_to(tmp_path)
  assert by_size['qwen3/tiny'][0].gin_files[0].endswith('t5x_configs/models/qwen3/tiny.gin')
  assert by_size['t5_1_1/tiny'][0].gin_files[0].endswith('t5x_configs/models/t5_1_1/tiny.gin')
  # Same run, method and dataset parts across families: only the model part differs.
  a, b = by_size['qwen3/tiny'][1], by_size['t5_1_1/tiny'][1]
  assert a.gin_files[1:] == b.gin_files[1:] and a.task == b.task == 'sbs_cqa_paired_llm'
  assert a.spec.run_id == 'cqa_qwen3-tiny/sbs_llm/frac100/seed0'


def test_size_labels_name_the_family(tmp_path, monkeypatch):
  assert plots.size_label('t5x_configs/models/{size}.gin', 'qwen3/tiny') == 'Qwen3 tiny'
  assert plots.size_label('t5x_configs/models/t5_1_1/{size}.gin', 'small') == 'T5 v1.1 small'
  assert plots.size_label('t5x_configs/models/{size}.gin', 'gemma3/270m') == 'Gemma 3 270m'
  summary = [{'dataset': 'cqa', 'size': sz, 'method': m, 'fraction': 1.0,
              'test_accuracy_mean': 40.0 + i, 'test_accuracy_std': 0.5}
             for i, sz in enumerate(('t5_1_1/tiny', 'qwen3/tiny')) for m in ('ft', 'sbs')]
  seen = {}
  save = plots._save

  def spy(fig, path):
    seen['labels'] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    return save(fig, path)
  monkeypatch.setattr(plots, '_save', spy)
  sizes = ['t5_1_1/tiny', 'qwen3/tiny']
  p = plots.plot_metric_vs_size(
      summary, tmp_path / 's.png', sizes,
      size_labels=[plots.size_label('t5x_configs/models/{size}.gin', s) for s in sizes])
  assert p.read_bytes()[:8] == PNG
  assert seen['labels'] == ['T5 v1.1 tiny', 'Qwen3 tiny']
  assert matplotlib.get_backend().lower() == 'agg'
