"""benchmarks/bench.py end to end: a quick run of a tiny digits model in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_positive(section, keys):
  for key in keys:
    value = section[key]
    assert isinstance(value, (int, float)) and value > 0, (key, value)


def test_quick_tiny_digits_bench_writes_positive_numbers(tmp_path):
  output = tmp_path / 'bench.json'
  cache_dir = os.path.join(REPO_ROOT, '.pytest_cache', 'jax')  # The tests' cache (conftest).
  command = [sys.executable, os.path.join('benchmarks', 'bench.py'), '--quick', '--tiny',
             '--cases=digits', f'--output={output}', '--warm-cache', f'--cache-dir={cache_dir}']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  process = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
  assert process.returncode == 0, process.stderr[-4000:]
  report = json.loads(process.stdout)  # Only the JSON goes to stdout; logs go to stderr.
  with open(output) as f:
    assert json.load(f) == report

  for key in ('command', 'date', 'cpu_count', 'device', 'versions', 'total_seconds'):
    assert report[key], key
  assert 'bench.py --quick --tiny --cases=digits' in report['command']
  assert report['device']['platform'] == 'cpu' and report['versions']['jax']
  assert list(report['cases']) == ['digits']
  case = report['cases']['digits']
  _assert_positive(case, ('num_params', 'peak_rss_mib'))
  assert case['timed'] and case['config']['base_channels'] == 16
  _assert_positive(case['train'], (
      'batch_size', 'compile_seconds', 'flops_per_step', 'step_seconds_median', 'steps_per_sec',
      'images_per_sec', 'gflops_per_sec', 'timed_steps'))
  assert case['train']['timed_steps'] == 3 and case['train']['batch_size'] == 16
  sampling = case['sampling']
  _assert_positive(sampling, (
      'compile_seconds', 'flops_per_network_eval', 'flops_per_batch', 'batch_seconds_median',
      'images_per_sec', 'gflops_per_sec'))
  assert sampling['steps'] == 100 and sampling['sampler'] == 'ddim'
  assert sampling['flops_per_batch'] == 100 * sampling['flops_per_network_eval']

  # The hardware ceiling (a 1024 matmul under --tiny) and utilisation against it.
  assert report['matmul']['size'] == 1024
  _assert_positive(report, ('matmul_gflops_per_sec',))
  assert report['matmul_gflops_per_sec'] == report['matmul']['gflops_per_sec']
  for section in (case['train'], sampling):
    _assert_positive(section, ('mfu_vs_matmul', 'compile_seconds_warm'))
    assert section['mfu_vs_matmul'] == pytest.approx(
        section['gflops_per_sec'] / report['matmul_gflops_per_sec'])
    assert section['compile_seconds_cold'] is None  # --warm-cache: the first compile may hit.
  assert 'error' not in case['warm_compile']

  # Convolution and matmul FLOPs only (from the jaxpr): fewer than XLA's count of every op.
  _assert_positive(case['train'], ('conv_dot_flops_per_step', 'conv_dot_gflops_per_sec'))
  assert case['train']['conv_dot_flops_per_step'] < 2 * case['train']['flops_per_step']
  _assert_positive(sampling, ('conv_dot_flops_per_network_eval', 'conv_dot_gflops_per_sec'))
  assert sampling['conv_dot_flops_per_batch'] == 100 * sampling['conv_dot_flops_per_network_eval']
