"""The train step under several `cpu.ynn_fusions` settings, timed in turn in one process.

  .venv/bin/python benchmarks/ynn_fusions.py --batch-size=8 --rounds=6 \
      INDIVIDUAL_DOT,REDUCE INDIVIDUAL_DOT,REDUCE,ELTWISE
  .venv/bin/python benchmarks/ynn_fusions.py --case=digits --rounds=30 INDIVIDUAL_DOT,REDUCE ''

Each setting (YNNPACK fusion kinds, comma-separated; '' for XLA's defaults) compiles the train step
of the same config (bench-peer's 35.2M network by default, or `--case`) and trains its own copy
of one initial state; the settings take one step each in turn, round after round, so a machine
whose speed drifts slows them alike. The first round is not timed. Prints one JSON object: each
setting's median and all its step times, and the largest difference of any parameter from the
first setting's after the last round (the settings change kernels, not results).
"""

import argparse
import json
import os
import statistics
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (no jax at import)
import bench_peer  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
  parser.add_argument('settings', nargs='+', help='cpu.ynn_fusions values.')
  parser.add_argument('--case', default=bench_peer.CASE, choices=bench.CASES)
  parser.add_argument('--batch-size', type=int, default=0, help="0: the case's own.")
  parser.add_argument('--rounds', type=int, default=4, help='Including the untimed first.')
  args = parser.parse_args(argv)
  bench.cpu.reexec_with_hugepages()  # As main.py and bench.py.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax
  import numpy as np

  from bit_diffusion import engine as engine_lib
  from bit_diffusion import methods

  base = list(bench_peer.OURS) if args.case == bench_peer.CASE else []
  if args.batch_size:
    base.append(f'training.batch_size={args.batch_size}')
  steps, states = {}, {}
  for setting in args.settings:
    config = bench.case_config(args.case, base + [f'cpu.ynn_fusions={setting}'])
    engine = engine_lib.Engine(config, methods.create(config))
    if not states:
      state = engine.init_state(engine_lib.seed_key(config.seed, 'init'))
      batches = [engine.global_batch(b) for b in bench.synthetic_batches(config, 2)]
    steps[setting] = engine.train_step.lower(state, batches[0]).compile()
    states[setting] = jax.tree.map(lambda x: x.copy(), state)  # The step donates its state.
  times = {setting: [] for setting in args.settings}
  for round_index in range(args.rounds):
    for setting in args.settings:
      start = time.perf_counter()
      states[setting], _ = steps[setting](states[setting], batches[round_index % 2])
      jax.block_until_ready(states[setting])
      if round_index:
        times[setting].append(time.perf_counter() - start)
  first = jax.tree.leaves(states[args.settings[0]].params)
  report = {
      'case': args.case, 'batch_size': config.training.batch_size, 'rounds': args.rounds,
      'machine': bench.cpu.machine_report(), 'load_avg': list(os.getloadavg()),
      'settings': {s: {'median_seconds': statistics.median(t) if t else None,
                       'seconds': t,
                       'max_param_difference': max(
                           float(np.abs(np.asarray(a) - np.asarray(b)).max())
                           for a, b in zip(first, jax.tree.leaves(states[s].params)))}
                   for s, t in times.items()}}
  print(json.dumps(report, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
