"""The cost of compiling one train step under the current XLA_FLAGS: wall and CPU seconds.

  XLA_FLAGS='--xla_cpu_max_isa=AVX2 --xla_backend_optimization_level=0' \
      python benchmarks/compile_cost.py [--config=digits|disco|ggm]

Builds the tiny config's engine (configs/tiny.py), traces and lowers its train step, then times
`.compile()` alone (no persistent cache) and three steps of the compiled step. The CPU seconds
count every thread of the process (XLA compiles on a thread pool), which is what two test workers
sharing two cores pay. docs/benchmarks.md ("The test suite's time") compares XLA_FLAGS with it.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import timing  # noqa: E402  (benchmarks/, beside this file)

from bit_diffusion import engine as engine_lib  # noqa: E402
from bit_diffusion import methods  # noqa: E402
from configs import tiny  # noqa: E402

CONFIGS = {'digits': tiny.tiny_digits, 'disco': tiny.tiny_digits_disco,
           'ggm': tiny.tiny_digits_ggm}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='digits', choices=sorted(CONFIGS))
  args = parser.parse_args()
  config = CONFIGS[args.config]()
  method = methods.create(config)
  engine = engine_lib.Engine(config, method)
  state = engine.init_state(jax.random.PRNGKey(0))
  batch = engine.global_batch(next(method.task.train_iterator(config.training.batch_size, 0)))
  lowered = engine.train_step.trace(state, batch).lower()
  wall, cpu = time.perf_counter(), timing.cpu_seconds()
  train_step = lowered.compile()
  wall, cpu = time.perf_counter() - wall, timing.cpu_seconds() - cpu
  state, _ = train_step(state, batch)  # The first call; then three timed.
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(3):
    state, _ = train_step(state, batch)
  jax.block_until_ready(state)
  step_ms = (time.perf_counter() - start) / 3 * 1000
  print(f'{args.config}: compile {wall:.2f} s wall, {cpu:.2f} s CPU; step {step_ms:.1f} ms; '
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


if __name__ == '__main__':
  main()
