"""Sampling time per sample against network calls: GGM's heat bath and Bit Diffusion's DDIM.

  .venv/bin/python benchmarks/sampling_cost.py                  (or: make bench-sampling)
  .venv/bin/python benchmarks/sampling_cost.py --tasks=text --batch-size=32 --output=cost.json

For each task (text: configs/text.py and configs/text_ggm.py; digits: configs/digits.py and
configs/digits_ggm.py) the configs' own networks, at their real sizes, with untrained
parameters (the time of a network call does not depend on the weights' values): GGM sampled
with `--ggm-calls` network calls per sample (ggm.num_sweeps = calls / L, one position per call,
the configs' setting) and Bit Diffusion with DDIM at `--ddim-steps` steps (one network call per
step; self-conditioning reuses the previous estimate), all at the same batch size. Each setting
is compiled and run once (its compile time is reported), then timed `--repeats` times in rounds
that run every setting in turn (order reversed every other round), so that a change of load
falls on all of them alike; the row gives the median, in milliseconds per sample and per
network call (one call runs the whole batch).

Prints the machine (CPU model, vector instruction sets, XLA_FLAGS, load average at start and
end) and a
Markdown table; --output also writes everything as JSON. --tiny runs the tiny configs
(configs/tiny.py), for the tests.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402
import jax  # noqa: E402
from flax import nnx  # noqa: E402

from bit_diffusion import config_overrides  # noqa: E402
from bit_diffusion import cpu  # noqa: E402
from bit_diffusion import methods  # noqa: E402
from configs import digits  # noqa: E402
from configs import digits_ggm  # noqa: E402
from configs import text  # noqa: E402
from configs import text_ggm  # noqa: E402
from configs import tiny  # noqa: E402

TASKS = ('text', 'digits')


def task_configs(task: str, use_tiny: bool):
  """(Bit Diffusion config, GGM config) of a task: the real ones, or their tiny variants."""
  if task == 'text':
    if use_tiny:
      return tiny.tiny_text(text), tiny.tiny_text(text_ggm)
    return text.get_config(), text_ggm.get_config()
  if task == 'digits':
    if use_tiny:
      return tiny.tiny_digits(), tiny.tiny_digits_ggm()
    return digits.get_config(), digits_ggm.get_config()
  raise ValueError(f'Unknown task {task!r}; choose from {TASKS}.')


def untrained(method):
  """(graphdef, parameters) of the method's network, freshly initialised."""
  return nnx.split(method.create_network(jax.random.key(0)), nnx.Param)


def count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def task_cases(task: str, args: argparse.Namespace) -> list[dict]:
  """The settings of one task, each with its jitted sample function, parameters and conditions:
  GGM at each --ggm-calls, then DDIM at each --ddim-steps."""
  bd_config, ggm_config = task_configs(task, args.tiny)
  cases = []
  ggm_method = methods.create(ggm_config)
  length = ggm_method.process.length
  graphdef, params = untrained(ggm_method)
  conditions, _ = ggm_method.task.preview_conditions(args.batch_size)
  for calls in args.ggm_calls:
    if calls % length:
      raise ValueError(f'--ggm-calls={calls}: GGM on {task} takes a multiple of L={length} '
                       'network calls (one sweep each).')
    config = config_overrides.apply(ggm_config, {'ggm.num_sweeps': calls // length})
    method = methods.create(config, ggm_method.task)
    cases.append(dict(task=task, method='GGM', network_calls=calls, num_params=count(params),
                      setting=f'heat bath, {calls // length} sweeps of {length}',
                      fn=method.make_sample_fn(graphdef), params=params,
                      conditions=conditions))
  bd_method = methods.create(bd_config)
  graphdef, params = untrained(bd_method)
  conditions, _ = bd_method.task.preview_conditions(args.batch_size)
  for steps in args.ddim_steps:
    cases.append(dict(task=task, method='Bit Diffusion', network_calls=steps,
                      num_params=count(params), setting=f'DDIM {steps} steps',
                      fn=bd_method.make_sample_fn(graphdef, sampler='ddim', steps=steps,
                                                  td=0.0),
                      params=params, conditions=conditions))
  return cases


def run(case: dict, seed: int) -> float:
  """Seconds of one batch of samples."""
  start = time.perf_counter()
  jax.block_until_ready(case['fn'](case['params'], jax.random.key(seed), case['conditions']))
  return time.perf_counter() - start


def measure(cases: list[dict], batch: int, repeats: int, log) -> list[dict]:
  """Each case compiled and run once (timed: 'first_call_s'), then timed `repeats` times in
  rounds that run every case in turn (the order reversed every other round), so that a change
  of the machine's load falls on every setting alike; the rows hold the medians."""
  first = [run(case, 0) for case in cases]
  seconds = [[] for _ in cases]
  for r in range(repeats):
    order = list(range(len(cases)))
    for i in order if r % 2 == 0 else order[::-1]:
      seconds[i].append(run(cases[i], r + 1))
    log(f'round {r + 1} of {repeats} done')
  rows = []
  for case, first_s, times in zip(cases, first, seconds):
    median = statistics.median(times)
    rows.append({**{k: v for k, v in case.items() if k not in ('fn', 'params', 'conditions')},
                 'batch': batch, 'ms_per_sample': 1000 * median / batch,
                 'ms_per_call': 1000 * median / case['network_calls'], 'first_call_s': first_s,
                 'seconds': times})
    log(f"{case['task']} {case['method']} {case['setting']}: "
        f"{rows[-1]['ms_per_sample']:.2f} ms/sample")
  return rows


def table(rows: list[dict]) -> str:
  """A Markdown table of the rows."""
  lines = ['| task | method | setting | network calls per sample | parameters | batch | '
           'ms per sample | ms per network call (whole batch) | compile + first run (s) |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  lines += [f'| {r["task"]} | {r["method"]} | {r["setting"]} | {r["network_calls"]} | '
            f'{r["num_params"] / 1e6:.2f}M | {r["batch"]} | {r["ms_per_sample"]:.2f} | '
            f'{r["ms_per_call"]:.2f} | {r["first_call_s"]:.1f} |' for r in rows]
  return '\n'.join(lines) + '\n'


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ints = lambda text: tuple(int(x) for x in text.split(','))
  parser.add_argument('--tasks', default='text,digits', help='Comma-separated, of ' + str(TASKS))
  parser.add_argument('--ggm-calls', type=ints, default=(64, 128, 256, 512))
  parser.add_argument('--ddim-steps', type=ints, default=(10, 25, 100, 250))
  parser.add_argument('--batch-size', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--tiny', action='store_true', help='The tiny configs (tests).')
  parser.add_argument('--output', default='', help='Also write the report as JSON here.')
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  log = lambda message: print(message, file=sys.stderr, flush=True)
  report = bench.report_header(argv, log)
  report['options'] = vars(args)
  cases = [case for task in args.tasks.split(',') for case in task_cases(task, args)]
  report['rows'] = measure(cases, args.batch_size, args.repeats, log)
  report['load_avg_end'] = list(os.getloadavg())
  machine = report['machine']
  print(f"{report['date']}, {machine['cpu_model']} "
        f"({'/'.join(machine['vector_isa']).upper()}), {report['cpus_available']} CPUs "
        f"available, load average {report['load_avg_start'][0]:.1f} at start, "
        f"{report['load_avg_end'][0]:.1f} at end; untrained parameters, batch "
        f"{args.batch_size}, median of {args.repeats}.\n")
  print(table(report['rows']))
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == '__main__':
  cpu.reexec_with_hugepages()  # As main.py: glibc's transparent-huge-page tunable.
  main()
