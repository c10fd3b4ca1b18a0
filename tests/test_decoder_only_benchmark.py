"""benchmarks/decoder_only_throughput.py runs at the tiny size with one repeat
(JAX `DecoderOnlyTransformer` vs transformers' `Qwen3ForCausalLM`, same weights)."""
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_decoder_only_benchmark_at_tiny_size(tmp_path):
  out = tmp_path / 'results.jsonl'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             PYTHONPATH=str(REPO))
  proc = subprocess.run(
      [sys.executable, str(REPO / 'benchmarks' / 'decoder_only_throughput.py'),
       '--sizes=tiny', '--repeats=1', '--batch_size=2', '--inputs=8', '--targets=4',
       f'--json={out}'], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  train, decode = [json.loads(line) for line in out.read_text().splitlines()]
  assert (train['benchmark'], decode['benchmark']) == ('train_step', 'greedy_decode')
  for r in (train, decode):
    assert r['size'] == 'tiny' and r['repeats'] == 1 and r['num_hidden_layers'] == 2
    assert r['jax_tokens_per_sec'] > 0 and r['torch_tokens_per_sec'] > 0
    assert abs(r['ratio'] - r['jax_tokens_per_sec'] / r['torch_tokens_per_sec']) < 1e-6 * r['ratio']
    assert r['jax_first_call_s'] > 0 and r['torch_threads'] == os.cpu_count()
  assert train['tokens'] == 2 * 12 and decode['tokens'] == 2 * 4
  # Same weights and batch: the first step's losses agree; greedy tokens mostly agree.
  assert abs(train['jax_loss'] - train['torch_loss']) < 1e-3
  assert decode['tokens_agree'] >= 0.75
  assert 'jax/torch' in proc.stdout and 'greedy tokens agree' in proc.stdout
