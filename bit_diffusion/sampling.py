"""Generating images from a trained model: the jitted sampler, grids and sample files.

`make_sample_fn` ties the network, the diffusion's x0 estimate, guidance and a sampler into one
jitted function params, rng, labels -> integer images. `write_grid` saves a PNG grid.
"""

import math
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from bit_diffusion import diffusion as diffusion_lib
from bit_diffusion import models
from bit_diffusion import samplers


def make_sample_fn(graphdef: nnx.GraphDef, diffusion: diffusion_lib.Diffusion, *,
                   image_shape: tuple[int, int, int], sampler: str, steps: int, td: float,
                   ddpm_variance: str, guidance: float, self_condition: bool,
                   microbatch_size: int = 0, mesh: Optional[jax.sharding.Mesh] = None
                   ) -> Callable[..., jax.Array]:
  """Returns a jitted fn(params, rng, labels int32 [B]) -> images int32 [B, H, W, C].

  image_shape: (H, W, C) of the data. Labels are class labels (their count sets the batch; an
  unconditional model ignores them). With a mesh, the batch is sharded over its 'data' axis.
  microbatch_size > 0 runs each network evaluation on microbatches of that many images in turn
  (`models.make_denoise_fn`): the same samples, faster on a CPU.
  """
  height, width, channels = image_shape
  num_shards = 1 if mesh is None else mesh.shape['data']
  bit_channels = channels * diffusion.codec.channels_per_value
  if guidance and not diffusion.num_classes:
    raise ValueError('Classifier-free guidance needs a class-conditional model '
                     '(data.class_conditional=True, trained with diffusion.label_dropout > 0).')

  def sample_fn(params, rng, labels):
    denoise_fn = models.make_denoise_fn(graphdef, params, microbatch_size=microbatch_size,
                                        num_shards=num_shards)

    def x0_fn(x_t, gamma, self_cond, labels):
      return diffusion.clipped_x0(denoise_fn(x_t, gamma, self_cond, labels, None), x_t, gamma)

    # Unconditional models ignore the labels, which then only carry the batch size.
    model_labels = labels if diffusion.num_classes else None
    x0_fn = samplers.guided_x0_fn(x0_fn, model_labels, diffusion.num_classes, guidance,
                                  diffusion.scale)
    x0, _ = samplers.sample(x0_fn, (labels.shape[0], height, width, bit_channels), rng,
                            gamma_fn=diffusion.gamma_fn, steps=steps, sampler=sampler, td=td,
                            ddpm_variance=ddpm_variance, self_condition=self_condition)
    return diffusion.codec.decode(x0)

  if mesh is None:
    return jax.jit(sample_fn)
  batch_sharding = NamedSharding(mesh, P('data'))
  # Parameters keep the sharding they come with (replicated, or split for FSDP).
  return jax.jit(sample_fn, in_shardings=(None, NamedSharding(mesh, P()), batch_sharding),
                 out_shardings=batch_sharding)


def generate(sample_fn: Callable[..., jax.Array], params: Any, rng: jax.Array,
             labels: np.ndarray, batch_size: int) -> np.ndarray:
  """Samples len(labels) images in batches of `batch_size`; returns int32 [N, H, W, C].

  `labels` are the class labels, or zeros for an unconditional model (they set the count). The
  last batch is padded to `batch_size`, so one compiled function serves every batch.
  """
  outputs = []
  for start in range(0, len(labels), batch_size):
    chunk = labels[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros(batch_size - len(chunk), chunk.dtype)])
    images = sample_fn(params, jax.random.fold_in(rng, start), jnp.asarray(padded, jnp.int32))
    if jax.process_count() > 1:  # Each process holds only its rows: gather them everywhere.
      images = multihost_utils.process_allgather(images, tiled=True)
    outputs.append(np.asarray(jax.device_get(images))[:len(chunk)])
  return np.concatenate(outputs, axis=0)


def to_uint8(images: np.ndarray, max_value: int) -> np.ndarray:
  """Integer images in [0, max_value] -> uint8 in [0, 255] for display (larger values clip)."""
  scaled = images.astype(np.float64) * 255.0 / max_value
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, max_value: int, min_cell: int = 32) -> np.ndarray:
  """[N, H, W, C] integer images -> one uint8 [rows * H', cols * W', C] grid image.

  Images smaller than `min_cell` pixels are enlarged by an integer factor (nearest neighbour)
  so that 8x8 digits stay visible; one pixel of padding separates the cells.
  """
  n, height, width, channels = images.shape
  factor = max(1, math.ceil(min_cell / max(height, width)))
  images = to_uint8(images, max_value).repeat(factor, axis=1).repeat(factor, axis=2)
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  cell_h, cell_w = height * factor + 1, width * factor + 1
  grid = np.full((rows * cell_h + 1, cols * cell_w + 1, channels), 255, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, cols)
    grid[1 + r * cell_h:(r + 1) * cell_h, 1 + c * cell_w:(c + 1) * cell_w] = image
  return grid


def display_max(data_config) -> int:
  """The value shown white: `data.display_max`, or 2**num_bits - 1 when it is 0."""
  return data_config.display_max or 2**data_config.num_bits - 1


def write_grid(path: str, images: np.ndarray, max_value: int) -> np.ndarray:
  """Writes the grid of `images` (white = max_value) as a PNG at `path`; returns it uint8."""
  grid = make_grid(images, max_value)
  path = epath.Path(path)  # Local or cloud storage (gs://...).
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(f, format='PNG')
  return grid
