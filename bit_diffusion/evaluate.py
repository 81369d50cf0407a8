"""The image task's `sample` and `eval` modes: generate from, and score, the latest checkpoint.

`--mode=eval` reports the method's training loss with fixed noise (`eval.num_batches`) and the
sample metrics of `eval.num_samples` generated images (`sample_metrics`): FID, Inception Score
and k-NN precision/recall, in the feature space of `eval.feature_net` (see
`metrics/features.py`). The same for every method: Bit Diffusion and the Glauber Generative
Model are scored alike.
"""

import json
import os
import time
from typing import Any
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bit_diffusion import checkpointing
from bit_diffusion import cpu
from bit_diffusion import engine
from bit_diffusion import generation
from bit_diffusion import image_infill
from bit_diffusion import metric_writer
from bit_diffusion import outputs
from bit_diffusion import samplers
from bit_diffusion.metrics import features as features_lib
from bit_diffusion.metrics import fid
from bit_diffusion.tasks import images as images_lib


def sampling_settings(config) -> dict[str, Any]:
  """The sampler settings of the config's method, as recorded beside the sample metrics: Bit
  Diffusion's sampler, steps, td, guidance and (when on) autoguidance with its guide's step and
  (when not everywhere) the guidance interval, or GGM's positions_per_call; and use_ema."""
  s = config.sampling
  if config.method == 'ggm':
    return dict(positions_per_call=config.ggm.positions_per_call, use_ema=s.use_ema)
  settings = dict(sampler=s.sampler, steps=s.steps, td=s.td, guidance=s.guidance,
                  use_ema=s.use_ema)
  if s.get('autoguidance', 0.0):
    settings.update(autoguidance=s.autoguidance, guide_fraction=s.guide_fraction)
  interval = guidance_interval(config)
  if interval:
    settings.update(guidance_interval=interval)
  return settings


def guidance_interval(config) -> tuple[float, float] | None:
  """The config's guidance interval when some guidance is on and it is not every step."""
  s = config.sampling
  interval = tuple(s.get('guidance_interval', samplers.EVERYWHERE))
  guided = (s.get('guidance', 0.0) or s.get('autoguidance', 0.0)
            or config.get('disco', {}).get('guidance', 0.0))  # DisCo-Diff's, on its latents.
  return interval if guided and interval != samplers.EVERYWHERE else None


def sample_from_checkpoint(config, workdir: str) -> str:
  """Samples `config.sampling.num_samples` images from the latest checkpoint.

  Writes WORKDIR/samples/samples_<step>_<setting>[_w<guidance>][_ag<autoguidance>from<guide
  step>][_in<lo>-<hi>]_n<N>_seed<S>.npz (_in: the guidance interval, when not every step;
  setting: `generation.setting_name`, e.g. ddim100_td0 or ggm_k1) with keys `images` (int32
  [N, H, W, C], values in [0, 2**num_bits)) and `labels` (int32 [N]), and a PNG grid beside it. An
  existing file is never overwritten: the same settings sampled again go to ..._2.npz, ...
  (`outputs.reserve`). Returns the .npz path.
  """
  workdir = checkpointing.ensure_writable_dir(workdir)
  s = config.sampling
  model = generation.load(config, workdir, s.use_ema)
  labels = model.task.sampling_conditions(s.num_samples, s.labels)
  logging.info('Sampling %d images from step %d: %s.', s.num_samples, model.step,
               sampling_settings(config))
  images = generation.generate(model.make_sample_fn(), model.params,
                               engine.seed_key(config.seed, 'sample'), labels,
                               model.batch_size(s.batch_size))
  guidance, autoguidance = s.get('guidance', 0.0), s.get('autoguidance', 0.0)
  interval = guidance_interval(config)
  name = (f'samples_{model.step}_{generation.setting_name(config)}'
          + (f'_w{guidance:g}' if guidance else '')
          + (f'_ag{autoguidance:g}from{model.method.guide_step()}' if autoguidance else '')
          + (f'_in{interval[0]:g}-{interval[1]:g}' if interval else '')
          + f'_n{s.num_samples}_seed{config.seed}')
  path = os.path.join(workdir, 'samples', name)
  if jax.process_index() == 0:
    path = outputs.reserve(path, ('.npz', '.png'))
    model.task.save_samples(images, labels, path)
    logging.info('Wrote %d samples to %s.npz and its .png grid.', len(images), path)
  return path + '.npz'


def _format_seconds(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  return f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'


# --mode=infill for images (the module's docstring has the file format).
infill_from_file = image_infill.infill_from_file


def sample_metrics(config, model: generation.LoadedModel,
                   num_samples: Optional[int] = None,
                   net: Optional[features_lib.FeatureNet] = None,
                   **sampling_overrides) -> dict[str, Any]:
  """FID, IS and precision/recall of `num_samples` images sampled with `model.params`.

  The feature network and the reference statistics are prepared first, so missing weights fail
  before any sampling. Images are generated in batches of `sampling.batch_size` sharded over
  the model's mesh and turned into features at once (only features are kept), with progress
  and ETA in the log. `sampling_overrides` (Bit Diffusion's sampler, steps, td, guidance, ...;
  GGM's positions_per_call) change the method's sampling settings for this call; `net` is the
  feature net (made from `config.eval` when None). Returns {'fid', 'is', 'is_std',
  'precision', 'recall', 'num_samples', 'seconds', ...} and, for `eval.reference='half'`, the
  real-against-real floor as 'fid_floor', 'is_floor', ... with 'floor_count' real images.
  """
  ev = config.eval
  num_samples = num_samples or ev.num_samples
  net = net or features_lib.create_feature_net(ev)
  extractor = features_lib.Extractor(net, model.mesh, model.batch_size(ev.feature_batch_size),
                                     config.cpu)
  max_value = images_lib.display_max(config.data)
  reference = features_lib.reference_statistics(config, extractor, max_value)
  sample_fn = model.make_sample_fn(**sampling_overrides)
  settings = sampling_settings(config)
  settings.update({k: v for k, v in sampling_overrides.items() if k in settings})
  labels = model.task.sampling_conditions(num_samples)
  batch_size = model.batch_size(config.sampling.batch_size)
  rng = engine.seed_key(config.seed, 'eval_samples')
  logging.info('Sample metrics: %d samples (%s), %s; reference %s.', num_samples, settings,
               net.description, reference['path'])
  features, logits, start = [], [], time.time()
  for i in range(0, num_samples, batch_size):
    images = generation.generate(sample_fn, model.params, jax.random.fold_in(rng, i),
                                 labels[i:i + batch_size], batch_size)
    f, lg = features_lib.extract(extractor, features_lib.to_unit_range(images, max_value))
    features.append(f)
    logits.append(lg)
    done, elapsed = min(i + batch_size, num_samples), time.time() - start
    logging.info('Sampled %d/%d (%.0f%%), %.1f images/s, elapsed %s, ETA %s.', done,
                 num_samples, 100 * done / num_samples, done / elapsed,
                 _format_seconds(elapsed), _format_seconds(elapsed * (num_samples / done - 1)))
  features, logits = np.concatenate(features), np.concatenate(logits)
  results = fid.all_metrics(reference['stats'], reference['real_features'], features, logits,
                            ev.pr_k, ev.is_splits)
  results.update(num_samples=num_samples, seconds=time.time() - start,
                 feature_net=ev.feature_net, reference=ev.reference,
                 reference_count=reference['stats'].count, **settings)
  if reference['floor']:
    results.update({f'{k}_floor': v for k, v in reference['floor'].items()})
    results['floor_count'] = reference['floor_count']
  return results


def format_sample_metrics(results: dict[str, Any]) -> str:
  """One readable line: FID (floor), IS, precision, recall."""
  def value(name):
    floor = results.get(f'{name}_floor')
    return f'{results[name]:.3f}' + (f' (real-vs-real floor {floor:.3f})' if floor is not None
                                     else '')
  return (f'FID {value("fid")}, IS {value("is")}, precision {value("precision")}, '
          f'recall {value("recall")}; {results["num_samples"]} samples against '
          f'{results["reference_count"]} real images ({results["feature_net"]} features).')


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
  """Scores the latest checkpoint (EMA weights unless sampling.use_ema=False): training loss
  and sample metrics.

  The method's training metrics (Bit Diffusion: loss, x0 error, bit error; GGM: loss, accuracy)
  are averaged over `config.eval.num_batches` batches with fixed noise, so numbers are
  comparable across checkpoints (0 batches skips them). With
  `eval.num_samples` > 0, FID, IS and precision/recall of that many samples follow
  (`sample_metrics`). Writes the scalars to TensorBoard (eval/...) and everything to
  WORKDIR/eval/metrics_<step>.json (metrics_<step>_2.json, ... when it exists); prints the
  sample metrics; returns the dict.
  """
  workdir = checkpointing.ensure_writable_dir(workdir)
  # Missing feature-net weights fail here, before anything is restored or computed.
  net = features_lib.create_feature_net(config.eval) if config.eval.num_samples else None
  model = generation.load(config, workdir, config.sampling.use_ema)
  step = model.step
  results = {}
  if config.eval.num_batches:
    results.update(_training_loss(config, model))
  if config.eval.get('infill_images', 0):
    agreement = image_infill.digits_agreement(config, model, config.eval.infill_images)
    results.update({f'eval/infill_agreement/{k}': v for k, v in agreement.items()})
  if config.eval.num_samples:
    metrics = sample_metrics(config, model, net=net)
    results.update({f'eval/{k}': v for k, v in metrics.items()})
    if jax.process_index() == 0:
      print(f'Step {step}: ' + format_sample_metrics(metrics), flush=True)
  results['step'] = step
  if jax.process_index() == 0:
    writer = metric_writer.create_writer(workdir)
    writer.write_scalars(step, {k: v for k, v in results.items()
                                if k != 'step' and isinstance(v, float)})
    writer.close()
    path = outputs.reserve(os.path.join(workdir, 'eval', f'metrics_{step}'), ('.json',)) + '.json'
    with open(path, 'w') as f:
      json.dump(results, f, indent=2)
    logging.info('Eval at step %d: %s (written to %s).', step, results, path)
  return results


def _training_loss(config, model: generation.LoadedModel) -> dict[str, float]:
  """eval/<metric> of the method's training loss over `eval.num_batches` fixed-noise batches."""
  batch_size = config.eval.batch_size or config.training.batch_size
  method, mesh = model.method, model.mesh
  data_iter = model.task.train_iterator(batch_size, config.seed + 3)
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))

  def eval_step(params, batch, rng):  # The training objective, on fixed noise.
    _, terms = method.loss(model.graphdef, params, batch, rng, batch_sharding)
    return jax.tree.map(jnp.mean, terms)
  eval_step = cpu.jit(eval_step, config.cpu)  # CPU kernels: as the train step's.

  totals = []
  key = engine.seed_key(config.seed, 'eval_loss')
  try:
    for i in range(config.eval.num_batches):
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
               for k, v in next(data_iter).items()}
      totals.append(jax.device_get(eval_step(model.params, batch, jax.random.fold_in(key, i))))
  finally:
    data_iter.close()
  return {f'eval/{name}': float(np.mean([t[name] for t in totals]))
          for name in method.metric_names}
