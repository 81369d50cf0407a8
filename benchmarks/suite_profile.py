"""Where the test suite's time goes: a pytest plugin that records, per test, wall time, CPU
time (the pytest process and its finished subprocesses) and JAX's compile, trace and lowering
seconds ('compile' counts XLA compiles and loads from the persistent cache; 'load' is the part of
it spent loading executables that an earlier test compiled); run as a script, it sums them per
file and lists the slowest tests.

  SUITE_PROFILE_DIR=/tmp/prof PYTHONPATH=benchmarks \
      PYTEST_ADDOPTS='-p suite_profile' make test
  python benchmarks/suite_profile.py /tmp/prof

Each pytest-xdist worker appends one JSON line per test to DIR/<worker>.jsonl.
"""

import collections
import json
import os
import resource
import sys
import time

import pytest
import timing  # benchmarks/, beside this file (PYTHONPATH=benchmarks).

_EVENTS = {'/jax/core/compile/backend_compile_duration': 'compile',
           '/jax/core/compile/jaxpr_trace_duration': 'trace',
           '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower',
           '/jax/compilation_cache/cache_retrieval_time_sec': 'cache_load'}
# The summary's columns, as the JSON lines name them.
_COLUMNS = ('wall', 'cpu', 'subprocess_cpu', 'compile', 'cache_load', 'trace', 'lower')
_seconds: dict[str, float] = {}
_out = None


def _listener(event: str, duration: float, **_) -> None:
  if event in _EVENTS:
    _seconds[_EVENTS[event]] = _seconds.get(_EVENTS[event], 0.0) + duration


def _cpu_seconds() -> tuple[float, float]:
  return timing.cpu_seconds(), timing.cpu_seconds(resource.RUSAGE_CHILDREN)


def pytest_configure(config):
  global _out
  import jax  # After conftest.py has set JAX's flags.
  jax.monitoring.register_event_duration_secs_listener(_listener)
  directory = os.environ['SUITE_PROFILE_DIR']
  os.makedirs(directory, exist_ok=True)
  # An xdist worker has its id in `workerinput` (not from the environment, which a pytest
  # started inside a worker inherits).
  worker = getattr(config, 'workerinput', {}).get('workerid', 'main')
  _out = open(os.path.join(directory, f'{worker}.jsonl'), 'a')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  del nextitem
  _seconds.clear()
  start, (own, children) = time.time(), _cpu_seconds()
  yield
  own_after, children_after = _cpu_seconds()
  _out.write(json.dumps({
      'test': item.nodeid, 'wall': time.time() - start, 'cpu': own_after - own,
      'subprocess_cpu': children_after - children, **_seconds}) + '\n')
  _out.flush()


def summarize(directory: str, top: int = 15) -> str:
  """Per worker and per file: wall, CPU and compile seconds; then the `top` slowest tests."""
  rows = []
  for name in sorted(os.listdir(directory)):
    if name.endswith('.jsonl'):
      with open(os.path.join(directory, name)) as f:
        rows += [{**json.loads(line), 'worker': name[:-len('.jsonl')]} for line in f]
  lines = []
  for group in ('worker', 'file'):
    sums = collections.defaultdict(lambda: collections.Counter())
    for row in rows:
      key = row['worker'] if group == 'worker' else row['test'].split('::')[0]
      sums[key].update({k: row.get(k, 0.0) for k in _COLUMNS})
    lines.append(f'{group:48s} {"wall":>7s} {"cpu":>7s} {"subproc":>7s} {"compile":>7s} '
                 f'{"load":>7s} {"trace":>7s} {"lower":>7s}')
    for key, s in sorted(sums.items(), key=lambda kv: -kv[1]['wall'])[:top]:
      lines.append(f'{key:48s} ' + ' '.join(f'{s[k]:7.1f}' for k in _COLUMNS))
    lines.append('')
  for row in sorted(rows, key=lambda r: -r['wall'])[:top]:
    lines.append(f'{row["wall"]:7.1f} s  {row["test"]}')
  return '\n'.join(lines)


if __name__ == '__main__':
  print(summarize(sys.argv[1]))
