"""benchmarks/bench.py: its config overrides, and end to end a quick run of a tiny digits model
in a subprocess."""

import json
import os
import subprocess
import sys

import jax
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))

import bench  # noqa: E402
import bench_peer  # noqa: E402
import sampling_cost  # noqa: E402
import suite_profile  # noqa: E402

from bit_diffusion import engine  # noqa: E402
from bit_diffusion import methods  # noqa: E402
from tests import subprocesses  # noqa: E402


def test_overrides_change_only_their_case_after_tiny():
  args = bench.parse_args(['--tiny', '--override=cifar10_small.cpu.sampler_microbatch_size=4',
                           '--override=digits.model.head_dim=32',
                           '--override=digits.training.batch_size=8'])
  cifar = bench.build_config('cifar10_small', args)
  assert cifar.cpu.sampler_microbatch_size == 4 and cifar.model.head_dim == 64
  assert cifar.model.base_channels == 16 and cifar.model.attention_resolutions == ()
  digits = bench.build_config('digits', args)
  assert digits.model.head_dim == 32 and digits.cpu.sampler_microbatch_size == 0
  assert digits.training.batch_size == 8  # An override wins over --tiny's batch cap of 16.


def test_synthetic_batches_lie_in_the_bit_range_with_labels_and_repeat_by_seed():
  config = bench.build_config('digits', bench.parse_args(['--override=digits.data.num_bits=3',
                                                          '--override=digits.training.batch_size=64']))
  first, second = bench.synthetic_batches(config, 2, seed=5)
  assert first['images'].shape == (64, 8, 8, 1) and first['labels'].shape == (64,)
  assert set(first['images'].ravel()) == set(range(8))  # All of [0, 2**3), nothing outside.
  assert set(first['labels']) <= set(range(10)) and len(set(first['labels'])) > 1
  assert not (first['images'] == second['images']).all()  # Each batch its own draw.
  again = bench.synthetic_batches(config, 1, seed=5)[0]
  assert (again['images'] == first['images']).all() and (again['labels'] == first['labels']).all()


@pytest.mark.parametrize('override', ['digits.model.num_heads=1',  # Renamed: head_dim.
                                      'digits.sampling.microbatch_size=4'])  # Now in cpu.
def test_override_of_a_missing_field_fails(override):
  args = bench.parse_args([f'--override={override}'])
  with pytest.raises(KeyError):
    bench.build_config('digits', args)


@pytest.mark.parametrize('override', ['mnist.model.base_channels=8', 'model.base_channels=8',
                                      'digits.model.base_channels', 'digits.=8'])
def test_override_without_case_field_and_value_is_rejected(override):
  with pytest.raises(SystemExit):
    bench.parse_args([f'--override={override}'])


def test_peer_config_names_existing_fields_and_has_35m_parameters():
  """bench_peer.py's overrides of our side: every field exists, and the U-Net stays in the
  port's parameter-count family (35.2M against its 36.4M), as its docstring says."""
  overrides = list(bench_peer.OURS) + [
      f'cpu.sampler_microbatch_size={bench_peer.SAMPLE_MICROBATCH}']
  args = bench.parse_args([f'--override={bench_peer.CASE}.{o}' for o in overrides])
  config = bench.build_config(bench_peer.CASE, args)
  assert config.model.head_dim == 256  # One head over the 256 channels at 16x16, as DDPM.
  method = methods.create(config)
  engine.check_config(config, method, num_devices=1, process_count=1)
  _, params = engine.abstract_network(method)
  assert round(sum(x.size for x in jax.tree.leaves(params)) / 1e6, 1) == 35.2


def _assert_positive(section, keys):
  for key in keys:
    value = section[key]
    assert isinstance(value, (int, float)) and value > 0, (key, value)


def test_quick_tiny_digits_bench_writes_positive_numbers(tmp_path):
  output = tmp_path / 'bench.json'
  command = [sys.executable, os.path.join('benchmarks', 'bench.py'), '--quick', '--tiny',
             '--cases=digits', f'--output={output}', '--warm-cache',
             f'--cache-dir={subprocesses.CACHE_DIR}']  # The tests' cache.
  process = subprocess.run(command, cwd=REPO_ROOT, env=subprocesses.env(), capture_output=True,
                           text=True, timeout=300)
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


def test_sampling_cost_times_ggm_calls_and_ddim_steps(tmp_path, capsys):
  """benchmarks/sampling_cost.py on the tiny text configs: one row per setting, GGM's calls as
  sweeps of L = 16, per-sample and per-call times from the same median, the table and JSON."""
  output = tmp_path / 'cost.json'
  report = sampling_cost.main(['--tiny', '--tasks=text', '--ggm-calls=16,32', '--ddim-steps=2',
                               '--batch-size=4', '--repeats=2', f'--output={output}'])
  rows = report['rows']
  assert [(r['method'], r['network_calls']) for r in rows] == [
      ('GGM', 16), ('GGM', 32), ('Bit Diffusion', 2)]
  assert rows[1]['setting'] == 'heat bath, 2 sweeps of 16'
  for r in rows:
    assert len(r['seconds']) == 2 and r['ms_per_sample'] > 0
    median = sorted(r['seconds'])[0] / 2 + sorted(r['seconds'])[1] / 2
    assert abs(r['ms_per_call'] * r['network_calls'] - r['ms_per_sample'] * 4) < 1e-9 * 1000
    assert abs(r['ms_per_sample'] - 1000 * median / 4) < 1e-9
  assert rows[0]['num_params'] == rows[1]['num_params'] != rows[2]['num_params']
  printed = capsys.readouterr().out
  assert printed.count('\n| text |') == 3 and 'untrained parameters, batch 4' in printed
  assert json.loads(output.read_text())['rows'][2]['setting'] == 'DDIM 2 steps'
  with pytest.raises(ValueError, match='multiple of L=16'):
    sampling_cost.main(['--tiny', '--tasks=text', '--ggm-calls=24', '--ddim-steps=2',
                        '--batch-size=4', '--repeats=1'])


def test_suite_profile_records_wall_cpu_and_compiles_per_test(tmp_path):
  """benchmarks/suite_profile.py as a pytest plugin on three tests: one compiles, one loads the
  same executable from the persistent cache, one sleeps."""
  (tmp_path / 'test_three.py').write_text(
      'import jax\n'
      'def test_compiles():\n'
      '  jax.jit(lambda x: x * 2 + 1)(1.0).block_until_ready()\n'
      'def test_loads():\n'
      '  jax.clear_caches()  # The in-memory caches: the executable comes from the disk.\n'
      '  jax.jit(lambda x: x * 2 + 1)(1.0).block_until_ready()\n'
      'def test_sleeps():\n'
      '  import time; time.sleep(0.5)\n')
  profile_dir = tmp_path / 'profile'
  env = subprocesses.env(SUITE_PROFILE_DIR=str(profile_dir),
                         PYTHONPATH=os.path.join(REPO_ROOT, 'benchmarks'),
                         JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'cache'),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  process = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-p', 'suite_profile', '-p', 'no:cacheprovider',
       'test_three.py'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert process.returncode == 0, process.stdout[-3000:]
  rows = {r['test'].split('::')[1]: r for r in map(json.loads, open(profile_dir / 'main.jsonl'))}
  assert set(rows) == {'test_compiles', 'test_loads', 'test_sleeps'}
  assert rows['test_compiles']['compile'] > 0 and 'cache_load' not in rows['test_compiles']
  loads = rows['test_loads']
  assert 0 < loads['cache_load'] <= loads['compile']  # A load is counted as a compile too.
  assert 'compile' not in rows['test_sleeps'] and rows['test_sleeps']['wall'] >= 0.5
  summary = suite_profile.summarize(str(profile_dir))
  assert 'test_three.py ' in summary and 'main ' in summary and ' load ' in summary
  assert summary.splitlines()[-3].endswith('test_three.py::test_sleeps')  # Slowest first.
