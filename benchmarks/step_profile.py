"""Where our train step and sampler spend their time, per kind of XLA:CPU operation.

  .venv/bin/python benchmarks/step_profile.py --batch-size=32 --train-steps=3 --sample-steps=5
  .venv-peer/bin/python -I benchmarks/same_network_torch.py --spec=SPEC --profile ...  (PyTorch)

Builds bench-peer's network of ours (bench_peer.OURS: the 35.2M U-Net, the sampler on
microbatches of 4), or with `--case` another of bench.py's cases (`digits`: the demo's), at one
batch size, compiles the train step and a DDIM sampler of
`--sample-steps` steps, runs each once, then again under JAX's profiler. XLA:CPU's thunk
executor records one trace event per executed operation ('hlo_op': the instruction's name in
the optimised HLO module). Each instruction is put in a category (`categorize`) from the
optimised HLO text: what its fusion computes (a convolution, a matrix product, a reduction,
elementwise work, copies), for convolutions and products whether JAX's backward pass made it (its
op_name metadata says 'transpose(', or, for a weight gradient that XLA rewrote into a
convolution over the image, is missing), and whether it belongs to the optimizer's update
(engine.Engine's NaN guard, a lax.cond around Adam's update and the EMA).

Prints one JSON object: per program (train step, sampler), the wall seconds per step, the sum of
the operations' own times per step, and per category its seconds per step, share of the summed
time and number of operations; plus the 12 slowest instructions. The sum and the wall can
differ: the thunk executor may run independent operations side by side; an operation that XLA
runs asynchronously (an Eigen convolution on its intra-op threads) records only its launch;
time between operations is in the wall only. `--trace-dir` keeps the profiler's traces and the
optimised HLO texts (TensorBoard's profile plugin reads the traces).
"""

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (no jax at import)
import bench_peer  # noqa: E402

# Categories, most specific first; `categorize` names the first that applies.
CATEGORIES = ('convolution', 'convolution, backward', 'matrix product',
              'matrix product, backward', 'optimizer update', 'reduction', 'elementwise',
              'copy / layout', 'control flow', 'other')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = (.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%(\S+) ')
_OPCODE = re.compile(r'^\S+(?:\{[^}]*\})? ([a-z][a-z0-9-]*)\(')
_CALLS = re.compile(r'calls=%([\w.\-]+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LAYOUT_OPS = {'copy', 'transpose', 'bitcast', 'reshape', 'concatenate', 'slice', 'pad',
               'reverse', 'dynamic-slice', 'dynamic-update-slice', 'broadcast', 'gather',
               'scatter', 'iota'}
_CONTROL_OPS = {'while', 'conditional', 'call', 'tuple', 'get-tuple-element', 'parameter',
                'constant', 'after-all', 'partition-id', 'replica-id'}


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
  """Optimised HLO text -> {instruction name: {'opcode', 'computation', 'calls', 'op_name'}}."""
  instructions: dict[str, dict[str, Any]] = {}
  computation = ''
  for line in text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      name, rest = match.groups()
      opcode = _OPCODE.match(rest)
      op_name = _OP_NAME.search(rest)
      instructions[name] = {'opcode': opcode.group(1) if opcode else '?',
                            'computation': computation, 'calls': _CALLS.findall(rest),
                            'op_name': op_name.group(1) if op_name else ''}
    elif not line.startswith(' '):
      match = _COMPUTATION.match(line)
      if match:
        computation = match.group(1)
  return instructions


def module_name(text: str) -> str:
  """The HLO module's name in optimised HLO text (the trace events' 'hlo_module')."""
  return re.search(r'HloModule (\S+?),', text).group(1)


def by_computation(instructions: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """{computation name: its instructions} of parse_hlo's result."""
  computations = collections.defaultdict(list)
  for info in instructions.values():
    computations[info['computation']].append(info)
  return computations


def categorize(name: str, instructions: dict[str, dict[str, Any]],
               computations: Optional[dict[str, list[dict[str, Any]]]] = None) -> str:
  """The category (CATEGORIES) of the executed instruction `name`: of what it and the
  computations it calls (a fusion's body) contain, the heaviest kind."""
  info = instructions.get(name)
  if info is None:
    return 'other'
  computations = computations or by_computation(instructions)
  # What it computes: its own opcode, or for a fusion, those of the computation it calls.
  opcodes, pending, seen = {info['opcode']} - {'fusion'}, list(info['calls']), set()
  op_names = [info['op_name']] + ([info['op_name']] if info['opcode'] in ('convolution', 'dot')
                                  else [])
  while pending:
    computation = pending.pop()
    if computation in seen or info['opcode'] in ('while', 'conditional'):
      continue  # A loop's body runs as thunks of its own.
    seen.add(computation)
    for inner in computations.get(computation, ()):
      opcodes.add(inner['opcode'])
      if inner['opcode'] in ('convolution', 'dot'):
        op_names.append(inner['op_name'])
      pending.extend(inner['calls'])
  # JAX names the gradient's operations 'transpose(jvp(...))/...'; XLA's rewrite of a weight
  # gradient into a convolution over the image keeps no metadata at all.
  backward = any('transpose(' in n or not n for n in op_names[1:])
  if 'convolution' in opcodes:
    return 'convolution, backward' if backward else 'convolution'
  if 'dot' in opcodes:
    return 'matrix product, backward' if backward else 'matrix product'
  if '/cond/' in info['op_name']:  # engine.Engine's NaN guard: Adam's update and the EMA.
    return 'optimizer update'
  if info['opcode'] in ('while', 'conditional', 'call'):
    return 'control flow'
  if 'reduce' in opcodes or 'reduce-window' in opcodes:
    return 'reduction'
  if opcodes - _LAYOUT_OPS - _CONTROL_OPS:
    return 'elementwise'
  if opcodes & _LAYOUT_OPS:
    return 'copy / layout'
  return 'other'


def thunk_events(trace_dir: str) -> list[tuple[str, str, float]]:
  """(hlo_module, hlo_op, seconds) of every XLA:CPU operation in the trace under `trace_dir`."""
  from jax._src import profiler
  events = []
  for path in glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True):
    data = profiler.ProfileData.from_file(path)
    for plane in data.planes:
      for line in plane.lines:
        for event in line.events:
          stats = dict(event.stats)
          if 'hlo_op' in stats:
            events.append((stats.get('hlo_module', ''), stats['hlo_op'],
                           event.duration_ns * 1e-9))
  return events


def summarize(events, module: str, instructions, steps: int, wall: float) -> dict[str, Any]:
  """Per-category seconds per step of one program's events."""
  by_category = collections.defaultdict(lambda: [0.0, 0])
  by_op = collections.defaultdict(float)
  computations = by_computation(instructions)
  categories = {}
  for event_module, op, seconds in events:
    if event_module != module:
      continue
    if op not in categories:
      categories[op] = categorize(op, instructions, computations)
    category = categories[op]
    by_category[category][0] += seconds
    by_category[category][1] += 1
    by_op[op] += seconds
  total = sum(s for s, _ in by_category.values())
  slowest = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
  return {
      'module': module, 'steps': steps, 'wall_seconds_per_step': wall,
      'op_seconds_per_step': total / steps,
      'categories': {c: {'seconds_per_step': by_category[c][0] / steps,
                         'share': by_category[c][0] / total if total else None,
                         'ops_per_step': by_category[c][1] / steps}
                     for c in CATEGORIES if c in by_category},
      'slowest_ops': [{'op': op, 'category': categories[op],
                       'op_name': instructions.get(op, {}).get('op_name', ''),
                       'seconds_per_step': s / steps} for op, s in slowest],
  }


def _profiled(run, trace_dir: str) -> float:
  """Runs `run()` under JAX's profiler (trace written to trace_dir); returns its wall seconds."""
  import jax
  jax.profiler.start_trace(trace_dir)
  start = time.perf_counter()
  try:
    run()
  finally:
    seconds = time.perf_counter() - start
    jax.profiler.stop_trace()
  return seconds


def _optimized_hlo(compiled, path: str) -> tuple[dict[str, dict[str, Any]], str]:
  """parse_hlo of a compiled program, whose text is also written to `path`; and its module's
  name (the trace events' 'hlo_module')."""
  text = compiled.as_text()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
  return parse_hlo(text), module_name(text)


# The comparison's rows: the categories of both sides, grouped.
COMPARED = (('convolutions, forward', ('convolution',)),
            ('convolutions, backward', ('convolution, backward',)),
            ('matrix products (attention, dense)', ('matrix product',
                                                   'matrix product, backward')),
            ('normalization, elementwise, reductions', ('normalization', 'elementwise',
                                                        'reduction')),
            ('optimizer update (Adam, EMA, clipping)', ('optimizer update',)),
            ('copies, layout, other', ('copy / layout', 'control flow', 'other')))


def compare(ours: dict[str, Any], torch_runs: dict[str, dict[str, Any]]) -> str:
  """A markdown table per program: ms per step of each COMPARED row, ours and each PyTorch
  variant (same_network_torch.py --profile-train-steps), each row also as a share of that
  side's summed operation time."""
  lines = []
  for program, title in (('train', 'train step'), ('sampling', 'sampler step')):
    if program not in ours:
      continue
    sides = [('ours', ours[program])] + [(f'PyTorch {name}', run[program])
                                         for name, run in torch_runs.items()]
    lines += [f'{title}, batch {ours["batch_size"]}: ms per step (share of the summed '
              'operations)', '', '| | ' + ' | '.join(name for name, _ in sides) + ' |',
              '| --- |' + ' --- |' * len(sides)]
    for row, members in COMPARED:
      cells = []
      for _, side in sides:
        seconds = sum(side['categories'].get(m, {}).get('seconds_per_step', 0.0)
                      for m in members)
        cells.append(f'{seconds * 1e3:.0f} ({seconds / side["op_seconds_per_step"]:.0%})')
      lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
    lines.append('| sum of the operations | ' + ' | '.join(
        f'{side["op_seconds_per_step"] * 1e3:.0f}' for _, side in sides) + ' |')
    lines.append('| wall, profiled | ' + ' | '.join(
        f'{side["wall_seconds_per_step"] * 1e3:.0f}' for _, side in sides) + ' |')
    lines.append('')
  return '\n'.join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
  parser.add_argument('--case', default=bench_peer.CASE, choices=bench.CASES,
                      help="bench.py's case; its default, with bench_peer.OURS, is bench-peer's "
                      'network.')
  parser.add_argument('--batch-size', type=int, default=8)
  parser.add_argument('--train-steps', type=int, default=3, help='Profiled train steps.')
  parser.add_argument('--sample-steps', type=int, default=5,
                      help='DDIM steps of the profiled sampler (0: no sampler).')
  parser.add_argument('--ours', action='append', default=[], metavar='SECTION.FIELD=VALUE',
                      help="Changes to the case's config (after bench_peer.OURS).")
  parser.add_argument('--trace-dir', default='', help='Keep the traces here.')
  parser.add_argument('--compare', nargs=2, metavar=('OURS_JSON', 'TORCH_JSON'),
                      help="Print the tables of this script's output against "
                      "same_network_torch.py --profile-train-steps's, and exit.")
  return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
  args = parse_args(argv)
  if args.compare:
    with open(args.compare[0]) as f:
      ours = json.load(f)
    with open(args.compare[1]) as f:
      torch_runs = json.load(f)['batches'][str(ours['batch_size'])]
    print(compare(ours, torch_runs))
    return 0
  bench.cpu.reexec_with_hugepages()  # As main.py and bench.py.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax

  from bit_diffusion import engine as engine_lib
  from bit_diffusion import methods

  b = args.batch_size
  if args.case == bench_peer.CASE:  # bench-peer's network.
    overrides = list(bench_peer.OURS) + [
        f'cpu.sampler_microbatch_size={bench_peer.SAMPLE_MICROBATCH}']
  else:
    overrides = []
  overrides += [f'training.batch_size={b}', f'sampling.batch_size={b}'] + args.ours
  config = bench.case_config(args.case, overrides)
  method = methods.create(config)
  engine = engine_lib.Engine(config, method)
  report: dict[str, Any] = {'batch_size': b, 'num_params': int(engine.num_params),
                            'machine': bench.cpu.machine_report(),
                            'xla_flags': os.environ.get('XLA_FLAGS', ''),
                            'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
                            'load_avg_start': list(os.getloadavg())}
  trace_root = args.trace_dir or tempfile.mkdtemp(prefix='step_profile_')
  state = engine.init_state(engine_lib.seed_key(config.seed, 'init'))
  batches = [engine.global_batch(batch) for batch in bench.synthetic_batches(config, 2)]

  compiled = engine.train_step.lower(state, batches[0]).compile()
  instructions, module = _optimized_hlo(compiled, os.path.join(trace_root, 'train.hlo.txt'))

  def train(steps):
    nonlocal state
    for i in range(steps):
      state, _ = engine.train_step(state, batches[i % 2])
    jax.block_until_ready(state)

  train(1)  # Warm-up: the first call's set-up is not profiled.
  unprofiled = []
  for _ in range(args.train_steps):
    start = time.perf_counter()
    train(1)
    unprofiled.append(time.perf_counter() - start)
  directory = os.path.join(trace_root, 'train')
  wall = _profiled(lambda: train(args.train_steps), directory) / args.train_steps
  report['train'] = summarize(thunk_events(directory), module, instructions, args.train_steps,
                              wall)
  report['train']['unprofiled_seconds_per_step'] = statistics.median(unprofiled)

  if args.sample_steps:
    sample_fn = method.make_sample_fn(engine.graphdef, engine.mesh, steps=args.sample_steps)
    labels = jax.numpy.asarray(method.task.sampling_conditions(b), jax.numpy.int32)
    rng = engine_lib.seed_key(config.seed, 'sample')
    compiled = sample_fn.lower(state.ema_params, rng, labels).compile()
    instructions, module = _optimized_hlo(compiled, os.path.join(trace_root, 'sample.hlo.txt'))
    run = lambda: jax.block_until_ready(compiled(state.ema_params, rng, labels))
    run()
    start = time.perf_counter()
    run()
    unprofiled = time.perf_counter() - start
    directory = os.path.join(trace_root, 'sample')
    wall = _profiled(run, directory) / args.sample_steps
    report['sampling'] = summarize(thunk_events(directory), module, instructions,
                                   args.sample_steps, wall)
    report['sampling']['unprofiled_seconds_per_step'] = unprofiled / args.sample_steps
  report['load_avg_end'] = list(os.getloadavg())
  report['trace_dir'] = trace_root
  print(json.dumps(report, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
