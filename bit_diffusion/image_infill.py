"""Infilling images: known pixels kept, the others filled in by a trained model (inpainting).

Bit Diffusion fills by replacement (`samplers.sample`: the known analog bits re-noised to every
step's level); the Glauber Generative Model holds the known values clean at every step and
re-draws only the others (`ggm.sample`, the paper's zero-shot infilling).
`--mode=infill --infill_file=FILE` reads FILE.npz with 'images' int [N, H, W, C] (or [N, H, W]
for one channel), 'mask' bool of the same shape or [N, H, W] (True: known), and 'labels' int
[N] (class-conditional models only), and writes the filled images as `--mode=sample` writes
samples (.npz and a .png grid).

`digits_agreement` scores it on the embedded digits: the lower half of each digit is removed
and filled, and the digits classifier (`metrics/digits_classifier.py`) reads the result; the
share of fills classified as the original digit is set beside the originals' share (the
ceiling) and that of the original upper half joined to the lower half of another digit (what
ignoring the known half gives).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bit_diffusion import checkpointing
from bit_diffusion import cpu
from bit_diffusion import engine
from bit_diffusion import generation
from bit_diffusion import input_pipeline
from bit_diffusion import outputs
from bit_diffusion.metrics import digits_classifier
from bit_diffusion.metrics import features
from bit_diffusion.tasks import images as images_lib


def read_known(path: str, task) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images int32 [N, H, W, C], known mask bool [N, H, W, C], labels int32 [N]) of an infill
  .npz; unknown values are set to 0."""
  if not os.path.isfile(path) or not path.endswith('.npz'):
    raise FileNotFoundError(f"Infill file {path!r} not found: an .npz with 'images' and 'mask'.")
  with np.load(path) as data:
    if not {'images', 'mask'} <= set(data.files):
      raise ValueError(f"{path} must hold 'images' int [N, H, W, C] and 'mask' bool; it has "
                       f'{data.files}.')
    images, mask = np.asarray(data['images']), np.asarray(data['mask'], bool)
    labels = np.asarray(data['labels'], np.int32) if 'labels' in data.files else None
  shape = task.example_shape
  if images.ndim == 3 and shape[-1] == 1:
    images = images[..., None]
  if mask.ndim == 3:
    mask = mask[..., None]
  if images.shape[1:] != shape:
    raise ValueError(f'{path}: images {images.shape[1:]} do not match the model\'s {shape}.')
  mask = np.broadcast_to(mask, images.shape) if mask.shape[:3] == images.shape[:3] else None
  if mask is None:
    raise ValueError(f"{path}: 'mask' must be [N, H, W] or [N, H, W, C] like the images.")
  known = images[mask]
  if known.size and (known.min() < 0 or known.max() >= task.vocab_size):
    raise ValueError(f'{path}: known values lie in [{known.min()}, {known.max()}], outside the '
                     f"model's [0, {task.vocab_size - 1}] (data.display_max, or 2**num_bits - 1 "
                     f'with {task.num_bits} bits).')
  if task.num_classes and labels is None:
    raise ValueError(f"{path}: a class-conditional model needs 'labels' int [N].")
  if labels is None:
    labels = np.zeros((len(images),), np.int32)
  return np.where(mask, images, 0).astype(np.int32), np.array(mask), labels


def fill(model: generation.LoadedModel, images: np.ndarray, mask: np.ndarray,
         labels: np.ndarray, rng: jax.Array, **overrides) -> np.ndarray:
  """int32 [N, H, W, C]: `images` with the values where `mask` is False filled by the model."""
  batch_size = model.batch_size(model.method.config.sampling.batch_size)
  filled = generation.generate(model.make_sample_fn(infill=True, **overrides), model.params, rng,
                               (labels, images.astype(np.int32), mask), batch_size)
  return np.where(mask, images, filled)


def infill_from_file(config, workdir: str, path: str) -> str:
  """Fills an infill file with the latest checkpoint; writes WORKDIR/infill/<file name>_<step>_
  <setting>.npz ('images', 'labels') and .png (setting: `generation.setting_name`, e.g.
  ddim100_td0 or ggm_k1); returns the .npz path."""
  workdir = checkpointing.ensure_writable_dir(workdir)
  model = generation.load(config, workdir, config.sampling.use_ema)
  images, mask, labels = read_known(path, model.task)
  filled = fill(model, images, mask, labels, engine.seed_key(config.seed, 'infill'))
  name = os.path.splitext(os.path.basename(path))[0]
  stem = os.path.join(workdir, 'infill',
                      f'{name}_{model.step}_{generation.setting_name(config)}')
  if jax.process_index() == 0:
    stem = outputs.reserve(stem, ('.npz', '.png'))
    model.task.save_samples(filled, labels, stem)
    logging.info('Filled %d images (%d unknown values) into %s.npz', len(filled),
                 int((~mask).sum()), stem)
  return stem + '.npz'


def lower_half_unknown(shape: tuple[int, ...]) -> np.ndarray:
  """bool [N, H, W, C]: the upper rows (H // 2 of them) known, the lower ones not."""
  rows = np.arange(shape[1]) < shape[1] // 2
  return np.broadcast_to(rows[None, :, None, None], shape).copy()


def digits_agreement(config, model: generation.LoadedModel, num: int) -> dict[str, float]:
  """Shares of `num` digits classified as their own label: 'infill' (lower half filled by the
  model), 'original' (the ceiling), 'other_lower_half' (the lower half of the next digit)."""
  if config.data.name != 'digits':
    raise ValueError('eval.infill_images scores digits only (a classifier of the embedded '
                     "digits reads the fills); set it to 0 for data.name="
                     f'{config.data.name!r}.')
  source, _ = input_pipeline.create_source(config.data)
  batch = source.get(np.arange(min(num, len(source))))
  images, labels = batch['images'].astype(np.int32), np.asarray(batch['labels'], np.int32)
  mask = lower_half_unknown(images.shape)
  conditions = labels if model.task.num_classes else np.zeros_like(labels)
  filled = fill(model, images, mask, conditions, engine.seed_key(config.seed, 'infill'))
  other = np.where(mask, images, np.roll(images, 1, axis=0))
  graphdef, params, _ = digits_classifier.load_or_train(config.eval.cache_dir)
  classify = cpu.jit(digits_classifier.make_apply_fn(graphdef), config.cpu)
  max_value = images_lib.display_max(config.data)  # 16: the classifier reads value / 16.

  def agreement(x):
    _, logits = classify(params, jnp.asarray(features.to_unit_range(x, max_value)))
    return float((np.argmax(np.asarray(logits), -1) == labels).mean())
  return {'infill': agreement(filled), 'original': agreement(images),
          'other_lower_half': agreement(other)}
