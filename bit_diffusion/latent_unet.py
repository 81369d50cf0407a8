"""DisCo-Diff's networks on images (Flax NNX): the U-Net conditioned on discrete latents, and
the convolutional encoder that infers them.

Xu, Corso, Jaakkola, Vahdat & Kreis, "DisCo-Diff" (ICML 2024, arXiv 2407.03300), Sec. 3.2 and
Appendix: the m latent embeddings [B, m, E] pass through a small Transformer (no causal mask,
learned positions) into m tokens, which the U-Net reads by cross-attention after each of its
self-attention layers (the `attention_resolutions`).

- `LatentUNet`: `unet.UNet` built with a `CrossAttention` after every self-attention layer;
  the denoiser protocol of methods/bit_diffusion.py with the condition (labels or None,
  latents [B, m, E]). `encode_condition` runs the Transformer once per sampled batch.
  Deviation from the paper (`pooled=True`, model.latent_pooled): the mean of the m tokens,
  projected, is also added to the noise embedding (as a label is), so the latents reach every
  residual block and not only the few attention layers of a small U-Net (digits: one
  resolution, 4x4).
- `ConvEncoder`: clean analog bits [B, H, W, C] -> logits [B, m, k]: a 3x3 convolution, then
  `depth - 1` stride-2 3x3 convolutions (SiLU between), flattened into one Dense layer: for
  small images (8x8 digits: 4x4 x width features); larger ones would want more downsampling.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from bit_diffusion import transformer
from bit_diffusion import unet


class CrossAttention(nnx.Module):
  """GroupNorm, multi-head attention of the h * w positions (queries) to the context tokens
  (keys and values), projection; scaled residual, as `unet.SelfAttention`.

  [b, h, w, channels], context [b, m, context_width] -> [b, h, w, channels]; channels //
  head_dim heads of width head_dim.
  """

  def __init__(self, channels: int, context_width: int, head_dim: int, dtype, rngs: nnx.Rngs):
    if channels < head_dim:
      raise ValueError(f'Cross-attention over {channels} channels with head_dim={head_dim} has '
                       'no head; lower model.head_dim.')
    self.num_heads, self.head_dim = channels // head_dim, head_dim
    width = self.num_heads * head_dim
    self.norm = unet.GroupNorm(channels, unet.num_groups(channels), 1e-5, dtype, rngs)
    self.query = nnx.Linear(channels, width, dtype=dtype, rngs=rngs)
    self.key_value = nnx.Linear(context_width, 2 * width, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(width, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    n, d = self.num_heads, self.head_dim
    q = self.query(self.norm(x)).reshape(b, h * w, n, d)
    kv = self.key_value(context).reshape(b, context.shape[1], 2, n, d).astype(q.dtype)
    y = jax.nn.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1])  # [b, hw, n, d]
    y = self.proj(y.reshape(b, h, w, n * d))
    return (x + y) * (2 ** -0.5)


class LatentUNet(nnx.Module):
  """The U-Net conditioned on DisCo-Diff's latents: x [B, H, W, in], gamma [B], (labels [B] or
  None, latents [B, m, E]) -> [B, H, W, out] float32."""

  def __init__(self, *, latent_shape: tuple[int, int], width: int, depth: int, num_heads: int,
               pooled: bool, rngs: nnx.Rngs, **unet_args):
    """Builds the network.

    Args:
      latent_shape: (m, E): m latents, each embedded in E dimensions (the codebook's rows).
      width, depth, num_heads: the latent Transformer (model.latent_width, latent_depth,
        latent_heads); its tokens are `width` wide.
      pooled: also add the projected mean token to the noise embedding (a deviation from the
        paper; module docstring).
      rngs: parameter initialisation randomness.
      **unet_args: the arguments of `unet.UNet` (in_channels, ..., dtype).
    """
    num_latents, embedding_dim = latent_shape
    self.latents_in = nnx.Linear(embedding_dim, width, rngs=rngs)
    self.transformer = transformer.Decoder(
        max_length=num_latents, context_width=0, width=width, depth=depth, mlp_dim=4 * width,
        num_heads=num_heads, causal=False, rngs=rngs)
    dtype, head_dim = unet_args.get('dtype', jnp.float32), unet_args.get('head_dim', 64)
    self.unet = unet.UNet(
        cross_attention=lambda channels: CrossAttention(channels, width, head_dim, dtype, rngs),
        rngs=rngs, **unet_args)
    self.pooled = (nnx.Linear(width, 4 * unet_args['base_channels'], rngs=rngs) if pooled
                   else None)

  def encode_condition(self, cond) -> tuple[Optional[jax.Array], jax.Array]:
    """(labels [B] or None, latents [B, m, E]) -> (labels, tokens [B, m, width])."""
    labels, latents = cond
    return labels, self.transformer(self.latents_in(latents.astype(jnp.float32)), None)

  def denoise(self, x: jax.Array, gamma: jax.Array, context, *,
              dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """One step: x [B, H, W, in], gamma [B], context (labels, tokens) -> [B, H, W, out]."""
    labels, tokens = context
    offset = None if self.pooled is None else self.pooled(jnp.mean(tokens, axis=1))
    return self.unet(x, gamma, labels, dropout_rng=dropout_rng, context=tokens,
                     embedding_offset=offset)

  def __call__(self, x: jax.Array, gamma: jax.Array, cond, *,
               dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    return self.denoise(x, gamma, self.encode_condition(cond), dropout_rng=dropout_rng)


class ConvEncoder(nnx.Module):
  """Clean analog bits [B, H, W, in_channels] -> latent logits [B, num_latents, codebook_size]
  float32 (module docstring)."""

  def __init__(self, *, in_channels: int, image_size: int, num_latents: int,
               codebook_size: int, width: int, depth: int, rngs: nnx.Rngs):
    if depth < 1:
      raise ValueError(f'The latent encoder needs at least one layer, got depth={depth}.')
    if image_size % 2 ** (depth - 1):
      raise ValueError(f'model.encoder_depth={depth} halves image_size={image_size} '
                       f'{depth - 1} times; use a smaller depth.')
    self.convs = nnx.List([
        nnx.Conv(in_channels if i == 0 else width, width, (3, 3), strides=1 if i == 0 else 2,
                 padding='SAME', rngs=rngs) for i in range(depth)])
    size = image_size // 2 ** (depth - 1)
    self.out = nnx.Linear(size * size * width, num_latents * codebook_size, rngs=rngs)
    self.num_latents, self.codebook_size = num_latents, codebook_size

  def __call__(self, bits: jax.Array) -> jax.Array:
    h = bits.astype(jnp.float32)
    for conv in self.convs:
      h = jax.nn.silu(conv(h))
    logits = self.out(h.reshape(h.shape[0], -1))
    return logits.reshape(-1, self.num_latents, self.codebook_size).astype(jnp.float32)
