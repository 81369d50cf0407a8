"""`make ablate`: the paper's main comparisons, trained and scored on the embedded digits (CPU).

  python tools/ablate.py [--workdir=runs/ablate] [--steps=1500] [--num_samples=898]

Trains configs/digits.py for `--steps` steps (its learning rate decays to 0 at the last one) once
per training variant, then scores each with the digits metrics (FID, IS, precision/recall in the
features of the cached digits classifier, against half B of the data; half A gives the
real-vs-real floor):

- encodings (paper Table 1): binary, Gray, permuted (fixed random permutation of the values),
  one-hot; all with self-conditioning, scored with DDIM 100 steps;
- self-conditioning off (trained and sampled without it), binary;
- samplers: DDIM and DDPM at several step counts, and td (the paper's asymmetric time interval,
  in steps) at 10 DDIM steps, on the binary model above and on the demo model
  (`--demo_workdir`, configs/digits.py trained for its training.num_steps; `make demo` trains
  it, and so does this script when the workdir has no finished checkpoint).

Each training lives in WORKDIR/<variant> and each score in WORKDIR/results.json, so a stopped
run resumes where it was. Writes the table to --output (docs/ablations.md) with the time taken.
"""

import json
import os
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from bit_diffusion import checkpointing  # noqa: E402
from bit_diffusion import config_overrides  # noqa: E402
from bit_diffusion import cpu  # noqa: E402
from bit_diffusion import evaluate  # noqa: E402
from bit_diffusion import generation  # noqa: E402
from bit_diffusion import train_loop  # noqa: E402
from configs import digits  # noqa: E402

flags.DEFINE_string('workdir', 'runs/ablate', 'Where the variants train and results go.')
flags.DEFINE_integer('steps', 1500, 'Training steps per variant.')
flags.DEFINE_integer('num_samples', 898, 'Samples scored per row (898 = real half A).')
flags.DEFINE_string('output', 'docs/ablations.md', 'The markdown table.')
flags.DEFINE_string('demo_workdir', 'runs/digits', 'The demo model (configs/digits.py as it is) '
                    'for the sampler rows; trained there if missing. Empty: skip.')
FLAGS = flags.FLAGS

# name -> (config overrides, description)
TRAININGS = {
    'binary': ({}, 'binary (uint8-style), self-cond.'),
    'gray': ({'bits.encoding': 'gray'}, 'Gray code, self-cond.'),
    'permuted': ({'bits.encoding': 'permuted'}, 'permuted values ("uint8 rand"), self-cond.'),
    'onehot': ({'bits.encoding': 'onehot'}, 'one-hot (32 channels), self-cond.'),
    'no_self_cond': ({'diffusion.self_condition_rate': 0.0, 'sampling.self_condition': False},
                     'binary, no self-conditioning'),
}
DEMO_STEPS = digits.get_config().training.num_steps
DEMO_BATCH = digits.get_config().training.batch_size
DEMO_DESCRIPTION = f'demo model: binary, self-cond., {DEMO_STEPS:,} steps'

DEFAULT_SAMPLER = {'sampler': 'ddim', 'steps': 100, 'td': 0.0}
# Sampling rows on the binary model (the DDIM 100 row is the binary training row).
SAMPLERS = [
    {'sampler': 'ddim', 'steps': 10, 'td': 0.0},
    {'sampler': 'ddim', 'steps': 10, 'td': 1.0},
    {'sampler': 'ddim', 'steps': 10, 'td': 2.0},
    {'sampler': 'ddim', 'steps': 25, 'td': 0.0},
    {'sampler': 'ddpm', 'steps': 25, 'td': 0.0},
    {'sampler': 'ddpm', 'steps': 100, 'td': 0.0},
    {'sampler': 'ddpm', 'steps': 250, 'td': 0.0},
]


def make_config(overrides: dict, demo: bool = False):
  config = digits.get_config()
  if not demo:
    config.training.num_steps = FLAGS.steps
    config.training.checkpoint_every = FLAGS.steps
    config.training.sample_every = 0  # One grid at the end.
  config.eval.num_samples = FLAGS.num_samples
  return config_overrides.apply(config, overrides)


def sampler_name(s: dict) -> str:
  return f'{s["sampler"].upper()} {s["steps"]}' + (f', td={s["td"]:g}' if s['td'] else '')


def run_rows(results: dict, save) -> None:
  """Trains and scores what `results` lacks; `save()` after each row."""
  models = [(name, make_config(overrides), os.path.join(FLAGS.workdir, name))
            for name, (overrides, _) in TRAININGS.items()]
  if FLAGS.demo_workdir:
    models.append(('demo', make_config({}, demo=True), FLAGS.demo_workdir))
  for name, config, workdir in models:
    samplers = [DEFAULT_SAMPLER] + (SAMPLERS if name in ('binary', 'demo') else [])
    keys = [f'{name}/{sampler_name(s)}' for s in samplers]
    if all(k in results for k in keys):
      continue
    if f'train/{name}' not in results:
      start = time.time()
      manager = checkpointing.create_manager(workdir, config.training.max_checkpoints)
      if (manager.latest_step() or 0) < config.training.num_steps:  # Else trained already.
        train_loop.train_and_evaluate(config, workdir)
      results[f'train/{name}'] = time.time() - start
      save()
    model = generation.load(config, workdir)  # The EMA weights of the latest checkpoint.
    for key, s in zip(keys, samplers):
      if key in results:
        continue
      metrics = evaluate.sample_metrics(config, model, **s)
      results[key] = metrics
      logging.info('%s: %s', key, evaluate.format_sample_metrics(metrics))
      save()


def machine_description() -> dict:
  """The CPU, its widest vector instructions, the XLA flags and the load average now."""
  report = cpu.machine_report()
  return {'cpu_model': report['cpu_model'] or platform.machine(),
          'widest_isa': report['widest_isa'], 'xla_flags': report['xla_flags'],
          'cpu_count': os.cpu_count(), 'devices': jax.device_count(),
          'load_average': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None}


def machine_line(machine: dict) -> str:
  """'AMD EPYC (AVX2), 2 CPU cores, 1 JAX device(s), load average 0.4 at the start'."""
  if not machine:
    return 'an unrecorded machine'
  isa = f' ({machine["widest_isa"]})' if machine.get('widest_isa') else ''
  flags = f', XLA_FLAGS={machine["xla_flags"]!r}' if machine.get('xla_flags') else ''
  load = (f', load average {machine["load_average"]:.1f} at the start'
          if machine.get('load_average') is not None else '')
  return (f'{machine["cpu_model"]}{isa}, {machine["cpu_count"]} CPU cores, '
          f'{machine["devices"]} JAX device(s){flags}{load}')


def table(results: dict, total_seconds: float, machine: dict) -> str:
  floor = next(v for k, v in results.items() if not k.startswith('train/'))
  lines = [
      '| model (trained on digits) | sampler | FID | IS | precision | recall | sampling s |',
      '| --- | --- | --- | --- | --- | --- | --- |',
      f'| real digits, half A ({floor["floor_count"]} images): the floor | - | '
      f'{floor["fid_floor"]:.2f} | {floor["is_floor"]:.2f} | {floor["precision_floor"]:.3f} | '
      f'{floor["recall_floor"]:.3f} | - |']
  for key, r in results.items():
    if key.startswith('train/'):
      continue
    name, sampler = key.split('/')
    description = DEMO_DESCRIPTION if name == 'demo' else TRAININGS[name][1]
    lines.append(f'| {description} | {sampler} | {r["fid"]:.2f} | {r["is"]:.2f} | '
                 f'{r["precision"]:.3f} | {r["recall"]:.3f} | {r["seconds"]:.0f} |')
  train_times = ', '.join(f'{k[6:]} {v / 60:.1f} min' for k, v in results.items()
                          if k.startswith('train/') and k != 'train/demo')
  return '\n'.join([
      '# Ablations on the embedded digits (CPU)',
      '',
      f'Written by `make ablate` (`python tools/ablate.py --steps={FLAGS.steps} '
      f'--num_samples={FLAGS.num_samples}`). Each model is configs/digits.py trained for '
      f'{FLAGS.steps} steps (the demo trains {DEMO_STEPS:,}), batch {DEMO_BATCH}, seed 0; the '
      'sampler rows reuse the binary model and the demo model (`runs/digits`). Metrics are '
      'in the feature space of the cached digits classifier '
      '(`bit_diffusion/metrics/digits_classifier.py`), '
      f'{FLAGS.num_samples} class-balanced samples against the real half B '
      f'({floor["reference_count"]} digits); the first row is real half A against half B, the '
      'value a perfect model would get. Lower FID is better; IS is at most 10 (10 classes). '
      'One run and one seed per row.',
      '',
      *lines,
      '',
      f'Total time {total_seconds / 60:.1f} min on {machine_line(machine)} '
      f'(training: {train_times}).',
      ''])


def main(argv):
  del argv
  os.makedirs(FLAGS.workdir, exist_ok=True)
  path = os.path.join(FLAGS.workdir, 'results.json')
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  start = time.time() - results.get('elapsed', 0.0)
  results.setdefault('machine', machine_description())  # Where the first rows ran.

  def save():
    results['elapsed'] = time.time() - start
    with open(path, 'w') as f:
      json.dump(results, f, indent=2)

  run_rows(results, save)
  elapsed = results.pop('elapsed', time.time() - start)
  machine = results.pop('machine')
  markdown = table(results, elapsed, machine)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
  with open(FLAGS.output, 'w') as f:
    f.write(markdown)
  print(markdown)


if __name__ == '__main__':
  app.run(main)
