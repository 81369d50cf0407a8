"""The points task: vectors of integers (points on a fixed-point grid), DisCo-Diff's toy.

An example is one point of the plane as 2 integers in [0, 2**num_bits) (`points/data.py` has the
grid and the mixture of Gaussians); there is no condition. Networks are multilayer perceptrons
(`mlp.py`): the denoiser (kind 'denoiser', optionally conditioned on DisCo-Diff's latents) and
DisCo-Diff's latent encoder ('latent_encoder'). Samples are written as integers and decoded
points (.npz) and a scatter plot (.png); their metrics are `points/evaluate.py`.
"""

import os
from typing import Any
from typing import Optional

import jax
import numpy as np
from etils import epath
from flax import nnx
from PIL import Image

from bit_diffusion import mlp
from bit_diffusion import param_keys
from bit_diffusion.points import data as data_lib

SCATTER_PIXELS = 256


class PointsTask:
  """Points [2] of integers in [0, 2**num_bits), unconditional.

  Attributes:
    example_shape: (2,): one point.
    channels_last: True: the last axis of an example holds several values (the coordinates).
    num_bits: bits per coordinate.
    num_classes: 0 (no labels).
    grid: the fixed-point grid that turns integers into points and back.
  """
  SIGNATURE_FIELDS = {
      'data': ('num_bits', 'low', 'high'),
      'model': ('width', 'depth'),
  }
  channels_last = True
  num_classes = 0

  def __init__(self, config):
    self.config = config
    self.grid = data_lib.grid_from_config(config.data)
    self.example_shape = (2,)
    self.num_bits = config.data.num_bits

  def signature(self) -> dict[str, Any]:
    return {}

  def create_network(self, kind: str, *, rng: jax.Array, in_channels: int = 0,
                     out_channels: int = 0, out_kernel_size: int = 1,
                     latent_shape: Optional[tuple[int, int]] = None, num_latents: int = 0,
                     codebook_size: int = 0) -> nnx.Module:
    """'denoiser': (x_t ++ self_cond [B, in_channels], gamma [B], cond) -> [B, out_channels],
    conditioned on latents [B, *latent_shape] when given; 'latent_encoder': clean bits [B,
    in_channels] -> logits [B, num_latents, codebook_size] (sizes model.encoder_width and
    model.encoder_depth, in DisCo-Diff configs)."""
    del out_kernel_size  # No convolution.
    model = self.config.model
    if kind == 'denoiser':
      return mlp.MLPDenoiser(in_channels=in_channels, out_channels=out_channels,
                             width=model.width, depth=model.depth, latent_shape=latent_shape,
                             rngs=param_keys.ParamKeys(rng))
    if kind == 'latent_encoder':
      if 'encoder_width' not in model:
        raise ValueError('The latent encoder needs model.encoder_width and model.encoder_depth '
                         '(configs/toy_disco.py has them).')
      return mlp.MLPEncoder(in_channels=in_channels, num_latents=num_latents,
                            codebook_size=codebook_size, width=model.encoder_width,
                            depth=model.encoder_depth, rngs=param_keys.ParamKeys(rng))
    raise ValueError(f"The points task has no {kind!r} network (a denoiser and DisCo-Diff's "
                     "latent encoder); use config.method='bit_diffusion' or 'disco'.")

  def initial_params(self, params: Any) -> Any:
    return params

  # Data.

  def train_iterator(self, batch_size: int, seed: int, start_step: int = 0) -> Any:
    """This process's batches {'points': int32 [b, 2]}, fresh draws from the mixture."""
    return data_lib.PointsIterator(self.config.data, global_batch_size=batch_size, seed=seed,
                                   start_step=start_step, process_index=jax.process_index(),
                                   process_count=jax.process_count())

  def split_batch(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, None]:
    """(grid values int32 [B, 2], no condition)."""
    return batch['points'], None

  def loss_mask(self, data: jax.Array) -> None:
    del data
    return None

  # Sampling.

  def sampling_conditions(self, num: int) -> np.ndarray:
    """Zeros int32 [num], which only carry the count."""
    return np.zeros((num,), np.int32)

  def preview_conditions(self, num: int) -> tuple[np.ndarray, None]:
    return self.sampling_conditions(num), None

  def write_preview(self, samples: np.ndarray, references: None, step: int, workdir: str,
                    writer) -> None:
    """Writes a scatter plot of `samples` to WORKDIR/samples/points_STEP.png and TensorBoard."""
    del references
    image = write_scatter(os.path.join(workdir, 'samples', f'points_{step:08d}.png'),
                          self.grid.decode(samples), self.grid)
    writer.write_images(step, {'samples': image[None, ..., None]})

  def save_samples(self, samples: np.ndarray, conditions: np.ndarray, path: str) -> None:
    """Writes PATH.npz (`values` int32 [N, 2], `points` float64 [N, 2], the decoded cell
    centres) and PATH.png (a scatter plot)."""
    del conditions
    points = self.grid.decode(samples)
    with epath.Path(path + '.npz').open('wb') as f:
      np.savez(f, values=samples.astype(np.int32), points=points)
    write_scatter(path + '.png', points, self.grid)


def scatter_image(points: np.ndarray, grid: data_lib.Grid,
                  pixels: int = SCATTER_PIXELS) -> np.ndarray:
  """Points [N, 2] -> a uint8 [pixels, pixels] image of [low, high)^2, white background, each
  point darkening its pixel (so density shows), y upwards."""
  counts = np.zeros((pixels, pixels), np.int64)
  scaled = np.floor((np.asarray(points) - grid.low) / (grid.high - grid.low) * pixels)
  inside = np.all((scaled >= 0) & (scaled < pixels), axis=1)
  columns, rows = scaled[inside, 0].astype(int), pixels - 1 - scaled[inside, 1].astype(int)
  np.add.at(counts, (rows, columns), 1)
  return (255 * np.exp(-0.7 * counts)).astype(np.uint8)


def write_scatter(path: str, points: np.ndarray, grid: data_lib.Grid) -> np.ndarray:
  """Writes `scatter_image(points)` as a PNG at `path`; returns it."""
  image = scatter_image(points, grid)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:
    Image.fromarray(image).save(f, format='PNG')
  return image
