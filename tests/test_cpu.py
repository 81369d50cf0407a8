"""bit_diffusion.cpu: when the process restarts with glibc's huge-page tunable, and that it
does (a real restart in a subprocess); the machine report; main.py's garbage-collector
thresholds."""

import os
import subprocess
import sys

import pytest

from bit_diffusion import cpu

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tunable_added_or_appended():
  added = cpu.environment_with_hugepages({'PATH': '/bin'}, libc='glibc', thp_mode='madvise')
  assert added == {'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  appended = cpu.environment_with_hugepages(
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, libc='glibc', thp_mode='always')
  assert appended['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


@pytest.mark.parametrize('environ, libc, thp_mode', [
    ({'BIT_DIFFUSION_HUGEPAGES': '0'}, 'glibc', 'madvise'),  # Opted out.
    ({}, 'musl', 'madvise'),  # Not glibc (or not Linux: platform.libc_ver gives '').
    ({}, '', 'always'),
    ({}, 'glibc', 'never'),  # The kernel has THP off.
    ({}, 'glibc', None),  # No THP setting to read: unknown means never.
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'glibc', 'madvise'),  # The user's choice.
])
def test_no_restart_when_it_would_change_nothing(environ, libc, thp_mode, monkeypatch):
  monkeypatch.setattr(cpu, 'transparent_hugepage_mode', lambda: thp_mode)
  assert cpu.environment_with_hugepages(environ, libc=libc) is None


def test_transparent_hugepage_mode_reads_the_bracketed_word(tmp_path):
  setting = tmp_path / 'enabled'
  setting.write_text('always [madvise] never\n')
  assert cpu.transparent_hugepage_mode(str(setting)) == 'madvise'
  assert cpu.transparent_hugepage_mode(str(tmp_path / 'missing')) is None


_RESTART_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[1])
from bit_diffusion import cpu
print('start', os.environ.get('GLIBC_TUNABLES', ''), flush=True)
cpu.reexec_with_hugepages()
print('running', os.environ.get('GLIBC_TUNABLES', ''), sys.argv[2:])
"""


def test_reexec_restarts_once_with_the_tunable_and_the_same_arguments():
  environment = {k: v for k, v in os.environ.items()
                 if k not in ('GLIBC_TUNABLES', 'BIT_DIFFUSION_HUGEPAGES')}
  expected = cpu.environment_with_hugepages(environment)
  result = subprocess.run([sys.executable, '-c', _RESTART_SCRIPT, REPO_ROOT, 'a', '--b=1'],
                          env=environment, capture_output=True, text=True, check=True)
  lines = result.stdout.splitlines()
  if expected is None:  # No glibc or no THP here: it must simply run on.
    assert lines == ['start ', "running  ['a', '--b=1']"]
  else:  # One restart: 'start' twice (without, then with the tunable), then it runs.
    assert lines == ['start ', 'start glibc.malloc.hugetlb=1',
                     "running glibc.malloc.hugetlb=1 ['a', '--b=1']"]
  opted_out = subprocess.run(
      [sys.executable, '-c', _RESTART_SCRIPT, REPO_ROOT],
      env={**environment, 'BIT_DIFFUSION_HUGEPAGES': '0'}, capture_output=True, text=True,
      check=True)
  assert opted_out.stdout.splitlines() == ['start ', 'running  []']


_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni
"""


def test_machine_report_reads_model_isa_and_the_xla_restriction(tmp_path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(_CPUINFO)
  emulated = cpu.machine_report(str(cpuinfo), {'XLA_FLAGS': '--xla_force_host_platform_device_'
                                               'count=2 --xla_cpu_max_isa=avx2'})
  assert emulated == {
      'cpu_model': 'Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz',
      'vector_isa': ['sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl',
                     'avx512_vnni'],
      'widest_isa': 'AVX512',
      'xla_flags': '--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=avx2',
      'xla_cpu_max_isa': 'AVX2'}
  cpuinfo.write_text(_CPUINFO.replace(' avx512f avx512bw avx512vl avx512_vnni', ''))
  plain = cpu.machine_report(str(cpuinfo), {})
  assert (plain['widest_isa'], plain['xla_cpu_max_isa'], plain['xla_flags']) == ('AVX2', None, '')


def test_main_py_collects_garbage_less_often():
  """main.py sets GC_THRESHOLDS (not Python's default) before it imports JAX."""
  script = ('import gc, sys; default = gc.get_threshold(); sys.path.insert(0, sys.argv[1]); '
            'import main; print(default, gc.get_threshold(), "jax" in sys.modules)')
  result = subprocess.run([sys.executable, '-c', script, REPO_ROOT], cwd=REPO_ROOT,
                          env={**os.environ, 'BIT_DIFFUSION_HUGEPAGES': '0'},
                          capture_output=True, text=True, check=True)
  assert result.stdout.strip() == f'(700, 10, 10) {cpu.GC_THRESHOLDS} False'
