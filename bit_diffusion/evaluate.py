"""The `sample` and `eval` modes: generate from, and score, the latest checkpoint in a workdir."""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers

from bit_diffusion import checkpointing
from bit_diffusion import input_pipeline
from bit_diffusion import models
from bit_diffusion import sampling
from bit_diffusion import train


def _restore(config, workdir: str) -> tuple[train.Trainer, train.TrainState, int]:
  trainer = train.Trainer(config)
  manager = checkpointing.create_manager(workdir, config.training.max_checkpoints)
  state, step = trainer.restore(manager)
  return trainer, state, step


def sample_from_checkpoint(config, workdir: str) -> str:
  """Samples `config.sampling.num_samples` images from the latest checkpoint.

  Writes WORKDIR/samples/samples_<step>_<sampler><steps>_td<td>[_w<guidance>].npz with keys
  `images` (int32 [N, H, W, C], values in [0, 2**num_bits)) and `labels` (int32 [N]), and a PNG
  grid beside it. Returns the .npz path.
  """
  workdir = checkpointing.ensure_writable_dir(workdir)
  s = config.sampling
  trainer, state, step = _restore(config, workdir)
  params = state.ema_params if s.use_ema else state.params
  labels = train.default_labels(s.num_samples, trainer.diffusion.num_classes, s.labels)
  batch_size = trainer.device_multiple(s.batch_size)
  logging.info('Sampling %d images from step %d: %s, %d steps, td=%s, guidance=%s.',
               s.num_samples, step, s.sampler, s.steps, s.td, s.guidance)
  images = sampling.generate(trainer.make_sample_fn(), params,
                             jax.random.PRNGKey(config.seed + 2), labels, batch_size)
  name = f'samples_{step}_{s.sampler}{s.steps}_td{s.td:g}' + (
      f'_w{s.guidance:g}' if s.guidance else '')
  path = os.path.join(workdir, 'samples', name + '.npz')
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, images=images.astype(np.int32), labels=labels)
    sampling.write_grid(path[:-4] + '.png', images, sampling.display_max(config.data))
    logging.info('Wrote %s and its .png grid.', path)
  return path


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
  """Scores the latest checkpoint's EMA weights by the diffusion loss on training data.

  The loss, x0 error and bit error are averaged over `config.eval.num_batches` batches with fixed
  noise, so numbers are comparable across checkpoints. Writes them to TensorBoard (eval/...) and
  WORKDIR/eval/metrics_<step>.json; returns the dict.
  """
  workdir = checkpointing.ensure_writable_dir(workdir)
  trainer, state, step = _restore(config, workdir)
  batch_size = config.eval.batch_size or config.training.batch_size
  data_iter, _ = input_pipeline.create_train_iterator(
      config.data, global_batch_size=batch_size, seed=config.seed + 3)
  diffusion = trainer.diffusion

  @jax.jit
  def eval_step(params, batch, rng):
    bits = diffusion.codec.encode(batch['images'])
    labels = batch['labels'] if diffusion.num_classes else None
    terms = diffusion.loss_terms(models.make_denoise_fn(trainer.graphdef, params), bits, labels,
                                 rng)
    return jax.tree.map(jnp.mean, terms)

  totals = []
  try:
    for i in range(config.eval.num_batches):
      terms = eval_step(state.ema_params, trainer.global_batch(next(data_iter)),
                        jax.random.PRNGKey(10_000 + i))
      totals.append(jax.device_get(terms))
  finally:
    data_iter.close()
  results = {f'eval/{name}': float(np.mean([getattr(t, name) for t in totals]))
             for name in ('loss', 'x0_mse', 'bit_error')}
  results['step'] = step
  if jax.process_index() == 0:
    writer = metric_writers.create_default_writer(workdir)
    writer.write_scalars(step, {k: v for k, v in results.items() if k != 'step'})
    writer.flush()
    path = os.path.join(workdir, 'eval', f'metrics_{step}.json')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump(results, f, indent=2)
    logging.info('Eval at step %d: %s (written to %s).', step, results, path)
  return results
