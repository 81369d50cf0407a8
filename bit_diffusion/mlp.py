"""Multilayer perceptrons for vectors (Flax NNX): the points task's denoiser and latent encoder.

- `MLPDenoiser`: Bit Diffusion's denoiser for an example that is one vector of analog bits. It
  reads the noisy bits concatenated with the self-conditioning estimate [B, 2D] and the noise
  level gamma (a sinusoidal embedding of 1000 gamma through a 2-layer MLP, as the U-Net and the
  sequence denoiser), and predicts the raw output [B, out] through `depth` pre-LayerNorm residual
  blocks, each told the embedding. With `latent_shape` (m, E) it is also conditioned on
  DisCo-Diff's latents [B, m, E] (flattened, projected and added to the noise embedding).
- `MLPEncoder`: DisCo-Diff's encoder: clean analog bits [B, D] -> logits [B, m, k] of m
  discrete latents with codebooks of k entries (the paper's toy: a 3-layer MLP).
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from bit_diffusion import unet


class ResidualBlock(nnx.Module):
  """h + Dense(SiLU(Dense(SiLU(LayerNorm(h))) + Dense(SiLU(embedding)))): [B, W] -> [B, W]."""

  def __init__(self, width: int, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.dense_0 = nnx.Linear(width, width, rngs=rngs)
    self.embedding = nnx.Linear(width, width, rngs=rngs)
    self.dense_1 = nnx.Linear(width, width, rngs=rngs)

  def __call__(self, h: jax.Array, embedding: jax.Array) -> jax.Array:
    y = self.dense_0(jax.nn.silu(self.norm(h))) + self.embedding(jax.nn.silu(embedding))
    return h + self.dense_1(jax.nn.silu(y))


class MLPDenoiser(nnx.Module):
  """(x_t ++ self_cond [B, 2D], gamma [B], cond) -> raw output [B, out_channels].

  The denoiser protocol of bit_diffusion/methods/bit_diffusion.py: `encode_condition(cond)`
  once per batch, `denoise(x, gamma, context)` at every step; calling the module does both.
  Without latents the condition is ignored (the toy is unconditional); with latent_shape, cond
  is (task condition or None, latents float [B, m, E]) and the context is [B, width].
  """

  def __init__(self, *, in_channels: int, out_channels: int, width: int, depth: int,
               latent_shape: Optional[tuple[int, int]] = None, rngs: nnx.Rngs):
    self.bits_in = nnx.Linear(in_channels, width, rngs=rngs)
    self.noise_dense_0 = nnx.Linear(width, width, rngs=rngs)
    self.noise_dense_1 = nnx.Linear(width, width, rngs=rngs)
    self.has_latents = latent_shape is not None
    if self.has_latents:
      self.latents_in = nnx.Linear(latent_shape[0] * latent_shape[1], width, rngs=rngs)
    self.blocks = nnx.List([ResidualBlock(width, rngs) for _ in range(depth)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.bits_out = nnx.Linear(width, out_channels, kernel_init=nnx.initializers.zeros_init(),
                               rngs=rngs)
    self.width = width

  def encode_condition(self, cond) -> Optional[jax.Array]:
    """(task condition, latents [B, m, E]) -> context [B, width]; None without latents."""
    if not self.has_latents:
      return None
    _, latents = cond
    return self.latents_in(latents.reshape(latents.shape[0], -1))

  def denoise(self, x: jax.Array, gamma: jax.Array, context: Optional[jax.Array], *,
              dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """x [B, 2D], gamma [B], context [B, width] or None -> raw output [B, out_channels]."""
    del dropout_rng  # No dropout.
    embedding = unet.sinusoidal_embedding(gamma.reshape(-1) * 1000.0, self.width)
    embedding = self.noise_dense_1(jax.nn.silu(self.noise_dense_0(embedding)))  # [B, W]
    if context is not None:
      embedding = embedding + context
    h = self.bits_in(x)
    for block in self.blocks:
      h = block(h, embedding)
    return self.bits_out(jax.nn.silu(self.norm(h)))

  def __call__(self, x: jax.Array, gamma: jax.Array, cond, *,
               dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    return self.denoise(x, gamma, self.encode_condition(cond), dropout_rng=dropout_rng)


class MLPEncoder(nnx.Module):
  """Clean analog bits [B, in_channels] -> latent logits [B, num_latents, codebook_size]:
  `depth` Dense layers with SiLU between them."""

  def __init__(self, *, in_channels: int, num_latents: int, codebook_size: int, width: int,
               depth: int, rngs: nnx.Rngs):
    if depth < 1:
      raise ValueError(f'The latent encoder needs at least one layer, got depth={depth}.')
    sizes = [in_channels] + [width] * (depth - 1) + [num_latents * codebook_size]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.num_latents, self.codebook_size = num_latents, codebook_size

  def __call__(self, bits: jax.Array) -> jax.Array:
    h = bits.reshape(bits.shape[0], -1)
    for layer in self.layers[:-1]:
      h = jax.nn.silu(layer(h))
    return self.layers[-1](h).reshape(-1, self.num_latents, self.codebook_size).astype(
        jnp.float32)
