"""Training steps of equal wall time for configs: train steps and previews timed in turns.

  .venv/bin/python benchmarks/equal_time.py configs/digits.py configs/digits_ggm.py
  .venv/bin/python benchmarks/equal_time.py configs/digits.py \
      configs/digits_ggm.py:model.width=64,model.mlp_dim=256

On a shared CPU the load changes by the minute, so two runs timed one after the other compare
the load as much as the configs. Here all engines are built in one process (the configs' own
train step, batches from their own data iterator; `PATH:field=value,...` overrides fields) and
timed in rounds of
`--steps-per-round` steps, in turns (the order reversed every other round); each config's
steps/s is its median over the rounds, and the process CPU seconds per step are reported beside
it (less sensitive to other jobs). The preview of each config (`training.num_grid_samples`
samples with the EMA weights, the sampler `main.py` runs every `training.sample_every` steps
and at the end) is timed `--preview-repeats` times, in turns.

Prints one JSON object: per config its steps/s, CPU seconds per step, preview seconds, the
training wall time of its own num_steps (steps / rate + previews), and, for every config after
the first (the reference), the num_steps whose steps alone take the reference's step time
('equal_step_time_num_steps') and whose steps plus previews take the reference's whole training
('equal_wall_num_steps').
"""

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bit_diffusion import cpu  # noqa: E402

cpu.reexec_with_hugepages()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bit_diffusion import config_overrides  # noqa: E402
from bit_diffusion import engine as engine_lib  # noqa: E402
from bit_diffusion import generation  # noqa: E402
from bit_diffusion import methods  # noqa: E402


def load_config(spec: str):
  """get_config() of 'configs/x.py' or 'configs/x.py:section.field=value,...' (overridden)."""
  path, _, overrides = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  pairs = dict(config_overrides.parse(o) for o in overrides.split(',') if o)
  return config_overrides.apply(module.get_config(), pairs)


class Timed:
  """One config's engine, state, data and preview, ready to time."""

  def __init__(self, path: str):
    self.path = path
    self.config = load_config(path)
    self.method = methods.create(self.config)
    self.engine = engine_lib.Engine(self.config, self.method)
    self.state = self.engine.init_state(engine_lib.seed_key(self.config.seed, 'init'))
    self.data = self.method.task.train_iterator(self.config.training.batch_size,
                                                self.config.seed)
    self.sample_fn = self.method.make_sample_fn(self.engine.graphdef, self.engine.mesh)
    self.conditions, _ = self.method.task.preview_conditions(
        self.config.training.num_grid_samples)

  def steps(self, num: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of `num` train steps, data included."""
    wall, cpu_time = time.perf_counter(), time.process_time()
    for _ in range(num):
      self.state, _ = self.engine.train_step(self.state, self.engine.global_batch(next(self.data)))
    jax.block_until_ready(self.state)
    return time.perf_counter() - wall, time.process_time() - cpu_time

  def preview(self) -> float:
    """Wall seconds of one preview's samples."""
    start = time.perf_counter()
    samples = generation.generate(self.sample_fn, self.state.ema_params, jax.random.key(0),
                                  self.conditions, len(self.conditions))
    assert np.all(np.isfinite(samples))
    return time.perf_counter() - start

  def num_previews(self, num_steps: int) -> int:
    """Previews main.py writes in `num_steps` steps: every sample_every, and at the end."""
    every = self.config.training.sample_every
    return (num_steps // every if every else 0) + (1 if not every or num_steps % every else 0)


def equal_steps(reference: dict, other: dict, timed: Timed) -> tuple[int, int]:
  """(steps of `other` in the reference's step time, in its whole training wall time)."""
  step_time = reference['num_steps'] / reference['steps_per_sec']
  steps = equal_step_time = round(step_time * other['steps_per_sec'])
  while steps > 0 and (steps / other['steps_per_sec'] + timed.num_previews(steps)
                       * other['preview_seconds']) > reference['training_seconds']:
    steps -= max(1, math.ceil(steps / 200))
  return equal_step_time, steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('configs', nargs='+',
                      help='The reference config, then the others (PATH[:field=value,...]).')
  parser.add_argument('--rounds', type=int, default=8)
  parser.add_argument('--steps-per-round', type=int, default=25)
  parser.add_argument('--preview-repeats', type=int, default=2)
  args = parser.parse_args()
  timed = [Timed(spec) for spec in args.configs]
  for t in timed:  # Compile and warm up.
    t.steps(3)
    t.preview()
  rounds = {t.path: [] for t in timed}
  for r in range(args.rounds):
    for t in timed if r % 2 == 0 else timed[::-1]:
      rounds[t.path].append(t.steps(args.steps_per_round))
  previews = {t.path: [] for t in timed}
  for r in range(args.preview_repeats):
    for t in timed if r % 2 == 0 else timed[::-1]:
      previews[t.path].append(t.preview())
  report, n = {}, args.steps_per_round
  for t in timed:
    rate = statistics.median(n / wall for wall, _ in rounds[t.path])
    preview = statistics.median(previews[t.path])
    num_steps = t.config.training.num_steps
    report[t.path] = {
        'steps_per_sec': rate, 'steps_per_sec_per_round': [n / w for w, _ in rounds[t.path]],
        'cpu_seconds_per_step': statistics.median(c / n for _, c in rounds[t.path]),
        'preview_seconds': preview, 'num_grid_samples': t.config.training.num_grid_samples,
        'num_steps': num_steps, 'num_previews': t.num_previews(num_steps),
        'num_params': t.engine.num_params,
        'training_seconds': num_steps / rate + t.num_previews(num_steps) * preview}
  reference = report[timed[0].path]
  for t in timed[1:]:
    (report[t.path]['equal_step_time_num_steps'],
     report[t.path]['equal_wall_num_steps']) = equal_steps(reference, report[t.path], t)
  report['load_average'] = os.getloadavg()
  report['cpu_count'] = os.cpu_count()
  print(json.dumps(report, indent=2))


if __name__ == '__main__':
  main()
