"""DisCo-Diff's latents on images, and the cost of sampling, from the latest checkpoint.

  python tools/disco_latents.py --config=configs/digits_disco.py --workdir=runs/digits_disco
  python tools/disco_latents.py --config=configs/digits.py --workdir=runs/digits  # timing only

For a DisCo-Diff run, writes into WORKDIR/latents/:
- codes_<step>.json: the codes the encoder gives every training image (argmax): per latent the
  histogram over its k codes, codes used (>= 1% of the images), perplexity, and with labels the
  mutual information of code and class over log(num_classes) (`points.metrics.latent_usage`);
  the histogram of the code tuples; the TV between the prior's draws and these codes;
- grid_<step>.png: `--rows` rows of `--columns` samples, each row sharing one code tuple (the
  most common tuples of the training set, most common first); class-conditional models cycle
  the labels 0..num_classes-1 along a row, so a row shows one code across classes.
For every run (Bit Diffusion too): milliseconds per sample of the jitted sampler at each of
`--time_steps` (batches of `--time_batch`, compile excluded, best of `--time_repeats`), and
DisCo-Diff's prior alone; printed and written to WORKDIR/latents/timing_<step>.json.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bit_diffusion import engine  # noqa: E402
from bit_diffusion import generation  # noqa: E402
from bit_diffusion import input_pipeline  # noqa: E402
from bit_diffusion import outputs  # noqa: E402
from bit_diffusion.points import metrics  # noqa: E402
from bit_diffusion.tasks import images as images_lib  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """The command line (defined only when run as a script, so importing adds no flags)."""
  config_flags.DEFINE_config_file('config', None, 'The run\'s config file.')
  flags.DEFINE_string('workdir', None, 'The run to read.')
  flags.DEFINE_integer('rows', 10, 'Code tuples in the grid (most common first).')
  flags.DEFINE_integer('columns', 10, 'Samples per code tuple.')
  flags.DEFINE_list('time_steps', ['10', '25', '100'], 'Sampler steps to time ([] skips).')
  flags.DEFINE_integer('time_batch', 100, 'Samples per timed batch.')
  flags.DEFINE_integer('time_repeats', 3, 'Timed batches per setting (the best counts).')
  flags.mark_flags_as_required(['config', 'workdir'])


def training_codes(config, model: generation.LoadedModel) -> tuple[np.ndarray, np.ndarray]:
  """(codes int32 [N, m] of every training image, labels int32 [N] (zeros without labels))."""
  source, _ = input_pipeline.create_source(config.data)
  batch = source.get(np.arange(len(source)))
  extract = model.method.make_extract_fn(model.graphdef)
  images = batch['images'].astype(np.int32)
  codes = np.concatenate([np.asarray(extract(model.params, images[i:i + 500]))
                          for i in range(0, len(images), 500)])
  labels = np.asarray(batch.get('labels', np.zeros(len(images))), np.int32)
  return codes, labels


def code_report(config, codes: np.ndarray, labels: np.ndarray,
                prior_codes: np.ndarray) -> dict:
  """Histograms and usage of codes int [N, m] (module docstring); prior_codes: the prior's
  draws [M, m]."""
  k, num_classes = config.disco.codebook_size, config.data.num_classes
  report = {'num_images': len(codes),
            'histograms': [np.bincount(c, minlength=k).tolist() for c in codes.T]}
  usage = [metrics.latent_usage(c[:, None], labels, k, num_classes) for c in codes.T]
  report['per_latent'] = [{'codes_used': u['codes_used'],
                           'code_perplexity': u['code_perplexity'],
                           'class_information': u['mode_information'],
                           'class_purity': u['code_purity']} for u in usage]
  tuples, counts = np.unique(codes, axis=0, return_counts=True)
  order = np.argsort(-counts, kind='stable')
  report['tuples_used'] = int(len(tuples))
  report['tuple_histogram'] = [[tuples[i].tolist(), int(counts[i])] for i in order]
  report['prior_tv'] = metrics.code_frequency_tv(prior_codes, codes, k)
  return report


def code_grid(config, model: generation.LoadedModel, tuples: np.ndarray, columns: int,
              path: str) -> np.ndarray:
  """Samples [rows * columns, H, W, C] sharing one code tuple per row, written as a grid PNG
  at `path` (one row per tuple: the grid is columns wide)."""
  rows = len(tuples)
  codes = np.repeat(np.asarray(tuples, np.int32), columns, axis=0)  # [rows * columns, m]
  labels = np.tile(model.task.sampling_conditions(columns), rows)
  sample_fn = model.make_sample_fn(fixed_codes=True)
  images = generation.generate(sample_fn, model.params, engine.seed_key(config.seed, 'sample'),
                               (labels, codes), model.batch_size(config.sampling.batch_size))
  images_lib.write_grid(path, images, images_lib.display_max(config.data), cols=columns)
  return images


def timing(config, model: generation.LoadedModel, steps_list, batch: int,
           repeats: int) -> dict:
  """{'<sampler><steps>': ms per sample, ..., 'prior': ms per sample of the codes alone}."""
  batch = model.batch_size(batch)
  cond = model.task.sampling_conditions(batch)
  results = {}
  rng = engine.seed_key(config.seed, 'sample')
  for steps in steps_list:
    fn = model.make_sample_fn(steps=int(steps))
    jax.block_until_ready(fn(model.params, rng, cond))  # Compile.
    best = min(_seconds(lambda: fn(model.params, jax.random.fold_in(rng, r), cond))
               for r in range(repeats))
    results[f'{config.sampling.sampler}{steps}'] = 1000 * best / batch
  if config.method == 'disco':
    draw = model.method.make_prior_sample_fn(model.graphdef)
    jax.block_until_ready(draw(model.params, rng, batch))
    best = min(_seconds(lambda: draw(model.params, jax.random.fold_in(rng, r), batch))
               for r in range(repeats))
    results['prior'] = 1000 * best / batch
  return results


def _seconds(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def run(config, workdir: str, rows: int = 10, columns: int = 10, time_steps=(10, 25, 100),
        time_batch: int = 100, time_repeats: int = 3) -> dict:
  """Everything of the module docstring; returns {'codes': ..., 'grid': path, 'timing': ...}."""
  model = generation.load(config, workdir, config.sampling.use_ema)
  out_dir = os.path.join(workdir, 'latents')
  os.makedirs(out_dir, exist_ok=True)
  result = {'step': model.step}
  if config.method == 'disco':
    codes, labels = training_codes(config, model)
    prior_codes = np.asarray(model.method.make_prior_sample_fn(model.graphdef)(
        model.params, engine.seed_key(config.seed, 'eval_samples'), len(codes)))
    result['codes'] = code_report(config, codes, labels, prior_codes)
    tuples = [t for t, _ in result['codes']['tuple_histogram'][:rows]]
    grid_path = outputs.reserve(os.path.join(out_dir, f'grid_{model.step}'), ('.png',)) + '.png'
    code_grid(config, model, np.asarray(tuples), columns, grid_path)
    result['grid'] = grid_path
    path = outputs.reserve(os.path.join(out_dir, f'codes_{model.step}'), ('.json',)) + '.json'
    with open(path, 'w') as f:
      json.dump(result['codes'], f, indent=1)
  if time_steps:
    result['timing'] = timing(config, model, time_steps, time_batch, time_repeats)
    path = outputs.reserve(os.path.join(out_dir, f'timing_{model.step}'), ('.json',)) + '.json'
    with open(path, 'w') as f:
      json.dump(result['timing'], f, indent=1)
  return result


def main(argv):
  del argv
  result = run(FLAGS.config, FLAGS.workdir, FLAGS.rows, FLAGS.columns,
               [int(s) for s in FLAGS.time_steps], FLAGS.time_batch, FLAGS.time_repeats)
  codes = result.get('codes')
  if codes:
    print(f"Step {result['step']}: {codes['tuples_used']} code tuples used by "
          f"{codes['num_images']} training images; per latent: {codes['per_latent']}; "
          f"prior TV {codes['prior_tv']:.3f}; grid {result['grid']}")
    for i, histogram in enumerate(codes['histograms']):
      print(f'latent {i} histogram: {histogram}')
  if 'timing' in result:
    print('ms per sample: ' + ', '.join(f'{k} {v:.2f}' for k, v in result['timing'].items()))


if __name__ == '__main__':
  define_flags()
  app.run(main)
