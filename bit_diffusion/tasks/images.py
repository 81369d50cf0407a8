"""The image task: images of integers in [0, 2**num_bits), its networks, sample grids and files.

A task knows its data, its network and its outputs, and nothing of how they are generated: a
method (bit_diffusion/methods/) asks it for a network of a kind and shape, for batches as
(integer data, conditioning), and hands it integer samples to write. Scoring samples (FID, IS,
precision/recall) is `bit_diffusion/evaluate.py`.

Networks: Bit Diffusion's denoiser is the U-Net (`unet.py`, config.model holds its fields);
DisCo-Diff's is the U-Net with cross-attention to its latents, and its latent encoder a small
convolutional network (`latent_unet.py`, config.model's latent_* and encoder_* fields);
the Glauber Generative Model's classifier reads an image [H, W, C] as one sequence of H * W * C
tokens in raster order (channels fastest) over the data's values 0..data.display_max
(`transformer.GlauberTransformer`, config.model holds width, depth, mlp_dim, num_heads and
positions).
"""

import math
import os
from typing import Any
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from PIL import Image

from bit_diffusion import input_pipeline
from bit_diffusion import latent_unet
from bit_diffusion import param_keys
from bit_diffusion import transformer
from bit_diffusion import unet

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# The config.model fields of each network; the checkpoint signature holds those of the config's.
UNET_FIELDS = ('base_channels', 'channel_multipliers', 'num_res_blocks', 'attention_resolutions',
               'head_dim')
TRANSFORMER_FIELDS = ('width', 'depth', 'mlp_dim', 'num_heads', 'positions')
# DisCo-Diff's latent Transformer in the U-Net (`latent_unet.py`); its encoder's fields are in
# the method's signature.
LATENT_FIELDS = ('latent_width', 'latent_depth', 'latent_heads', 'latent_pooled')
DATA_FIELDS = ('image_size', 'channels', 'num_bits', 'class_conditional', 'num_classes')


def compute_dtype(config) -> Any:
  """The jnp dtype of `training.compute_dtype` (parameters stay float32)."""
  name = config.training.compute_dtype
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'Unknown training.compute_dtype {name!r}; choose one of '
                     f'{tuple(COMPUTE_DTYPES)}.')
  return COMPUTE_DTYPES[name]


class ImageTask:
  """Images [H, W, C] of integers in [0, 2**num_bits), optionally with class labels.

  Attributes:
    example_shape: (H, W, C) of one image.
    channels_last: True: the last axis of an example holds several values (C channels).
    num_bits: bits per value; values lie in [0, 2**num_bits).
    vocab_size: the values the data holds, 0..data.display_max (2**num_bits when display_max
      is 0; digits: 17): GGM's vocabulary.
    num_classes: labels in [0, num_classes) (0: unconditional); num_classes is the null label.
    SIGNATURE_FIELDS: the data fields and the config.model fields of the config's network (the
      U-Net's, or the Transformer's with data.display_max, which sets its vocabulary).
  """
  channels_last = True

  def __init__(self, config):
    self.config = config
    data = config.data
    self.example_shape = (data.image_size, data.image_size, data.channels)
    self.num_bits = data.num_bits
    self.num_classes = data.num_classes if data.class_conditional else 0
    if data.display_max >= 2**data.num_bits:
      raise ValueError(f'data.display_max={data.display_max} (the largest value of the data) '
                       f'lies outside [0, 2**num_bits) = [0, {2**data.num_bits}): set '
                       'data.display_max below it, or 0 for 2**num_bits - 1.')
    self.vocab_size = display_max(data) + 1
    if 'width' in config.model:
      self.SIGNATURE_FIELDS = {'data': DATA_FIELDS + ('display_max',),
                               'model': TRANSFORMER_FIELDS}
    else:
      self.SIGNATURE_FIELDS = {'data': DATA_FIELDS, 'model': UNET_FIELDS}
    if config.method == 'disco':
      self.SIGNATURE_FIELDS['model'] += LATENT_FIELDS

  def signature(self) -> dict[str, Any]:
    """Checkpoint signature entries beyond SIGNATURE_FIELDS: none."""
    return {}

  def create_network(self, kind: str, *, rng: jax.Array, in_channels: int = 0,
                     out_channels: int = 0, out_kernel_size: int = 3,
                     latent_shape: Optional[tuple[int, int]] = None, num_latents: int = 0,
                     codebook_size: int = 0) -> nnx.Module:
    """The network of a kind, from `config.model`.

    'denoiser' (Bit Diffusion): the U-Net, network(x [B, H, W, in_channels], gamma [B], labels
    [B] or None) -> [B, H, W, out_channels]; with latent_shape (m, E) (DisCo-Diff) the
    `latent_unet.LatentUNet`, whose condition is (labels or None, latents [B, m, E]).
    'latent_encoder' (DisCo-Diff): `latent_unet.ConvEncoder`, clean bits [B, H, W,
    in_channels] -> logits [B, num_latents, codebook_size]. 'glauber' (GGM): the Transformer
    over the H * W * C values, network(tokens_in int [B, H * W * C] with phi = vocab_size,
    time [B], labels [B] or None) -> logits [B, H * W * C, vocab_size].
    """
    if kind not in ('denoiser', 'glauber', 'latent_encoder'):
      raise ValueError(f'The image task has no {kind!r} network (a denoising U-Net, '
                       "DisCo-Diff's latent encoder and GGM's classifier); use "
                       "config.method='bit_diffusion', 'disco' or 'ggm'.")
    fields, network = ((UNET_FIELDS, 'U-Net') if kind == 'denoiser' else
                       (TRANSFORMER_FIELDS, 'Transformer') if kind == 'glauber' else
                       (('encoder_width', 'encoder_depth'), 'latent encoder'))
    if latent_shape is not None:
      fields, network = fields + LATENT_FIELDS, 'U-Net with latents'
    missing = [f for f in fields if f not in self.config.model]
    if missing:
      example = ('configs/digits_ggm.py' if kind == 'glauber' else 'configs/digits_disco.py'
                 if kind == 'latent_encoder' or latent_shape else 'configs/digits.py')
      raise ValueError(
          f'config.method={self.config.method!r} on images needs a {network} in config.model '
          f'({", ".join(fields)}); this config.model lacks {", ".join(missing)}. Start from a '
          f'config of the method, such as {example}.')
    model, rngs = self.config.model, param_keys.ParamKeys(rng)
    if kind == 'glauber':
      return transformer.GlauberTransformer(
          vocab_size=self.vocab_size, max_length=math.prod(self.example_shape),
          width=model.width, depth=model.depth, mlp_dim=model.mlp_dim,
          num_heads=model.num_heads, positions=model.positions, num_classes=self.num_classes,
          token_scale=self.config.ggm.token_scale, rngs=rngs)
    if kind == 'latent_encoder':
      return latent_unet.ConvEncoder(
          in_channels=in_channels, image_size=self.config.data.image_size,
          num_latents=num_latents, codebook_size=codebook_size, width=model.encoder_width,
          depth=model.encoder_depth, rngs=rngs)
    unet_args = dict(
        in_channels=in_channels, out_channels=out_channels, out_kernel_size=out_kernel_size,
        image_size=self.config.data.image_size, base_channels=model.base_channels,
        channel_multipliers=tuple(model.channel_multipliers),
        num_res_blocks=model.num_res_blocks,
        attention_resolutions=tuple(model.attention_resolutions), head_dim=model.head_dim,
        dropout=model.dropout, num_classes=self.num_classes, dtype=compute_dtype(self.config))
    if latent_shape is None:
      return unet.UNet(rngs=rngs, **unet_args)
    return latent_unet.LatentUNet(
        latent_shape=latent_shape, width=model.latent_width, depth=model.latent_depth,
        num_heads=model.latent_heads, pooled=model.latent_pooled, rngs=rngs, **unet_args)

  def initial_params(self, params: Any) -> Any:
    """Randomly initialised parameters, unchanged (no pretrained parts)."""
    return params

  # Data.

  def train_iterator(self, batch_size: int, seed: int, start_step: int = 0) -> Any:
    """This process's batches {'images', 'labels'} (numpy) from `start_step` on."""
    iterator, _ = input_pipeline.create_train_iterator(
        self.config.data, global_batch_size=batch_size, seed=seed, start_step=start_step)
    return iterator

  def split_batch(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, Optional[jax.Array]]:
    """(images int [B, H, W, C], labels int32 [B] or None when unconditional) of a batch."""
    return batch['images'], batch['labels'] if self.num_classes else None

  def loss_mask(self, data: jax.Array) -> Optional[jax.Array]:
    """Every position of an image counts in a loss: None."""
    del data
    return None

  # Sampling.

  def sampling_conditions(self, num: int, labels_spec: str = '') -> np.ndarray:
    """Labels int32 [num] to sample with: '' cycles 0..num_classes-1, or '3,3,7' repeated.

    An unconditional model gets zeros, which only carry the count.
    """
    if labels_spec:
      values = np.array([int(v) for v in str(labels_spec).split(',')], np.int32)
      if self.num_classes and (values.min() < 0 or values.max() >= self.num_classes):
        raise ValueError(f'sampling.labels {labels_spec!r} must lie in [0, {self.num_classes}).')
      return np.resize(values, num)
    if not self.num_classes:
      return np.zeros(num, np.int32)
    return (np.arange(num) % self.num_classes).astype(np.int32)

  def preview_conditions(self, num: int) -> tuple[np.ndarray, None]:
    """(labels, references) of the training previews: one of each class in turn, no refs."""
    return self.sampling_conditions(num), None

  def write_preview(self, samples: np.ndarray, references: None, step: int, workdir: str,
                    writer) -> None:
    """Writes a grid of `samples` to WORKDIR/samples/grid_STEP.png and to TensorBoard."""
    del references
    path = os.path.join(workdir, 'samples', f'grid_{step:08d}.png')
    grid = write_grid(path, samples, display_max(self.config.data))
    writer.write_images(step, {'samples': grid[None]})

  def save_samples(self, samples: np.ndarray, conditions: np.ndarray, path: str) -> None:
    """Writes PATH.npz (`images` int32 [N, H, W, C], `labels` int32 [N]) and PATH.png (a grid)."""
    with epath.Path(path + '.npz').open('wb') as f:
      np.savez(f, images=samples.astype(np.int32), labels=conditions)
    write_grid(path + '.png', samples, display_max(self.config.data))


def to_uint8(images: np.ndarray, max_value: int) -> np.ndarray:
  """Integer images in [0, max_value] -> uint8 in [0, 255] for display (larger values clip)."""
  scaled = images.astype(np.float64) * 255.0 / max_value
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, max_value: int, min_cell: int = 32,
              cols: int = 0) -> np.ndarray:
  """[N, H, W, C] integer images -> one uint8 [rows * H', cols * W', C] grid image.

  Images smaller than `min_cell` pixels are enlarged by an integer factor (nearest neighbour)
  so that 8x8 digits stay visible; one pixel of padding separates the cells. cols: images per
  row (0: a square grid, ceil(sqrt(N))).
  """
  n, height, width, channels = images.shape
  factor = max(1, math.ceil(min_cell / max(height, width)))
  images = to_uint8(images, max_value).repeat(factor, axis=1).repeat(factor, axis=2)
  cols = cols or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  cell_h, cell_w = height * factor + 1, width * factor + 1
  grid = np.full((rows * cell_h + 1, cols * cell_w + 1, channels), 255, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, cols)
    grid[1 + r * cell_h:(r + 1) * cell_h, 1 + c * cell_w:(c + 1) * cell_w] = image
  return grid


def display_max(data_config) -> int:
  """The data's largest value, shown white: `data.display_max`, or 2**num_bits - 1 when 0."""
  return data_config.display_max or 2**data_config.num_bits - 1


def write_grid(path: str, images: np.ndarray, max_value: int, cols: int = 0) -> np.ndarray:
  """Writes the grid of `images` (white = max_value; `cols` per row, 0: square) as a PNG at
  `path`; returns it uint8."""
  grid = make_grid(images, max_value, cols=cols)
  path = epath.Path(path)  # Local or cloud storage (gs://...).
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(f, format='PNG')
  return grid
