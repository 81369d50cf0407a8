"""The points task's `sample` and `eval` modes, on the latest checkpoint of a workdir.

--mode=sample writes `sampling.num_samples` points (.npz: grid values and decoded points) and a
scatter plot. --mode=eval scores, for every sampler x steps of `eval.sweep_samplers` x
`eval.sweep_steps`, `eval.repeats` independent sets of `eval.num_samples` points against as many
fresh held-out points each:

- w2: the exact Wasserstein-2 distance in the original units (decoded cell centres), with the
  floor of the same number of fresh points against the reference (two samples of the data
  itself are not at 0, mostly because their modes' counts differ: 0.34 at 2,000 points, 0.23
  at 4,000);
- off_mode: the share of points farther than 4 sigma from every mean;
- mode_tv, within_w2: W2 split into the weights of the modes and their shapes
  (`metrics.mode_report`);
- curvature, turning: of the sampler's paths (`metrics.path_curvature`, EDM coordinates), on
  `eval.curvature_samples` paths (deterministic samplers only);
and for DisCo-Diff the use of its latents (`metrics.latent_usage` on the held-out points'
extracted codes) and how far the prior's code frequencies are from them (TV).
Results: WORKDIR/eval/points_<step>.json and .md (never overwritten).
"""

import itertools
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from bit_diffusion import checkpointing
from bit_diffusion import engine
from bit_diffusion import generation
from bit_diffusion import outputs
from bit_diffusion import samplers
from bit_diffusion.points import data as data_lib
from bit_diffusion.points import metrics

DETERMINISTIC = ('ddim', 'dpm2m')


def sample_from_checkpoint(config, workdir: str) -> str:
  """Samples `sampling.num_samples` points; writes WORKDIR/samples/points_<step>_<sampler>
  <steps>_n<N>_seed<S>.npz (`values` int32 [N, 2], `points` float64 [N, 2]) and .png. Returns
  the .npz path."""
  workdir = checkpointing.ensure_writable_dir(workdir)
  s = config.sampling
  model = generation.load(config, workdir, s.use_ema)
  conditions = model.task.sampling_conditions(s.num_samples)
  values = generation.generate(model.make_sample_fn(), model.params,
                               engine.seed_key(config.seed, 'sample'), conditions,
                               model.batch_size(s.batch_size))
  name = f'points_{model.step}_{s.sampler}{s.steps}_n{s.num_samples}_seed{config.seed}'
  path = os.path.join(workdir, 'samples', name)
  if jax.process_index() == 0:
    path = outputs.reserve(path, ('.npz', '.png'))
    model.task.save_samples(values, conditions, path)
    logging.info('Wrote %d points to %s.npz and its scatter plot.', len(values), path)
  return path + '.npz'


def infill_from_file(config, workdir: str, infill_file: str) -> str:
  del config, workdir, infill_file
  raise ValueError('The points task has no infilling.')


def _draw(model: generation.LoadedModel, num: int, key: jax.Array, **overrides) -> np.ndarray:
  """num outputs of the model's sample function (grid values, or paths with trajectory)."""
  return generation.generate(model.make_sample_fn(**overrides), model.params, key,
                             model.task.sampling_conditions(num),
                             model.batch_size(model.method.config.sampling.batch_size))


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
  """Scores the latest checkpoint (module docstring); returns {'step', 'num_samples',
  'repeats', 'rows': [{'setting', 'w2', 'w2_std', 'off_mode', 'mode_tv', 'within_w2',
  'curvature', 'turning', 'seconds'}, ...] (the first: fresh data, the floor), 'latents': {...}
  (DisCo-Diff only)}."""
  workdir = checkpointing.ensure_writable_dir(workdir)
  model = generation.load(config, workdir, config.sampling.use_ema)
  e, grid = config.eval, model.task.grid
  num, repeats = e.num_samples, e.repeats
  means = data_lib.mode_means(config.data.num_modes, config.data.radius)
  references = [data_lib.held_out(config.seed, r, num, config.data) for r in range(repeats)]
  floors = [score(grid.decode(data_lib.held_out(config.seed, repeats + r, num, config.data)[0]),
                  grid.decode(reference), means, config.data.sigma)
            for r, (reference, _) in enumerate(references)]
  output = {'step': model.step, 'num_samples': num, 'repeats': repeats,
            'rows': [summary('data (floor)', floors)]}
  key = engine.seed_key(config.seed, 'eval_samples')
  for sampler, steps in itertools.product(e.sweep_samplers, e.sweep_steps):
    start, overrides = time.time(), dict(sampler=sampler, steps=int(steps))
    scores = [score(grid.decode(_draw(model, num, jax.random.fold_in(key, r), **overrides)),
                    grid.decode(reference), means, config.data.sigma)
              for r, (reference, _) in enumerate(references)]
    row = summary(f'{sampler} {steps} steps', scores)
    if e.curvature_samples and sampler in DETERMINISTIC:
      paths = _draw(model, e.curvature_samples, key, trajectory=True, **overrides)
      gammas = samplers.path_gammas(model.method.diffusion.gamma_fn, int(steps),
                                    config.sampling.td)
      row.update(metrics.path_curvature(paths, np.asarray(gammas)))
    row['seconds'] = round(time.time() - start, 1)
    logging.info('Step %d, %s: %s', model.step, row['setting'], row)
    output['rows'].append(row)
  if config.method == 'disco':
    output['latents'] = latent_report(config, model, references)
  if jax.process_index() == 0:
    base = outputs.reserve(os.path.join(workdir, 'eval', f'points_{model.step}'), ('.json', '.md'))
    with open(base + '.json', 'w') as f:
      json.dump(output, f, indent=2)
    table = results_table(output)
    with open(base + '.md', 'w') as f:
      f.write(table)
    print(table, flush=True)
    logging.info('Wrote %s.json and .md', base)
  return output


def score(points: np.ndarray, reference: np.ndarray, means: np.ndarray,
          sigma: float) -> dict[str, float]:
  """w2, off_mode, mode_tv and within_w2 of points [n, 2] against reference [n, 2]."""
  return {'w2': metrics.wasserstein2(points, reference),
          'off_mode': metrics.off_mode_fraction(points, means, sigma),
          **metrics.mode_report(points, reference, means)}


def summary(setting: str, scores: list[dict[str, float]]) -> dict[str, Any]:
  """{'setting', each score's mean, and 'w2_std'} over the repeats."""
  row = {'setting': setting}
  row.update({key: float(np.mean([s[key] for s in scores])) for key in scores[0]})
  row['w2_std'] = float(np.std([s['w2'] for s in scores]))
  return row


def latent_report(config, model: generation.LoadedModel, references) -> dict[str, float]:
  """DisCo-Diff's latents on the held-out points: `metrics.latent_usage` of their extracted
  codes, and the TV between those codes' frequencies and the prior's draws."""
  method, d = model.method, config.disco
  values = np.concatenate([ref for ref, _ in references])
  modes = np.concatenate([m for _, m in references])
  extract = method.make_extract_fn(model.graphdef)
  codes = np.asarray(extract(model.params, values))
  drawn = np.asarray(method.make_prior_sample_fn(model.graphdef)(
      model.params, engine.seed_key(config.seed, 'eval_samples'), len(values)))
  report = metrics.latent_usage(codes, modes, d.codebook_size, config.data.num_modes)
  report['prior_tv'] = metrics.code_frequency_tv(drawn, codes, d.codebook_size)
  return report


def results_table(output: dict[str, Any]) -> str:
  """The eval results as Markdown."""
  lines = [f"Step {output['step']}, {output['num_samples']} points per set, "
           f"{output['repeats']} sets (mean ± std).", '',
           '| setting | W2 | mode TV | W2 within modes | off-mode | curvature | turning (rad) '
           '| seconds |', '| --- | --- | --- | --- | --- | --- | --- | --- |']
  for row in output['rows']:
    optional = lambda key, digits: f'{row[key]:.{digits}f}' if key in row else ''
    lines.append(f"| {row['setting']} | {row['w2']:.3f} ± {row['w2_std']:.3f} | "
                 f"{row['mode_tv']:.3f} | {row['within_w2']:.3f} | {row['off_mode']:.4f} | "
                 f"{optional('curvature', 4)} | {optional('turning', 3)} | "
                 f"{row.get('seconds', '')} |")
  if 'latents' in output:
    lines += ['', 'Latents: ' + ', '.join(f'{k} {v:.3f}' for k, v in output['latents'].items())]
  return '\n'.join(lines) + '\n'
