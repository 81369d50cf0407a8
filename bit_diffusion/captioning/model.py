"""The captioning networks (Flax NNX): a ViT image encoder and a Transformer caption decoder.

Paper Sec. 4.3: an image encoder plus a randomly initialised 6-layer, 512-wide Transformer
decoder with non-causal self-attention over the caption positions, cross-attending to the image
tokens. The diffusion decoder reads the noisy analog bits of the caption concatenated with the
self-conditioning estimate, [B, L, 2k], and the noise level gamma (a sinusoidal embedding of
1000 gamma, as the image U-Net), and predicts the bits' x0, [B, L, k].

The autoregressive baseline is the same encoder and decoder stack with causal self-attention,
token embeddings in and vocabulary logits out.

Module and parameter names of the encoder follow the big_vision / AugReg ViT (`embedding`,
`pos_embedding`, per block `LayerNorm_0`, `MultiHeadDotProductAttention`, `LayerNorm_1`,
`MlpBlock` with `Dense_0`/`Dense_1`, then `encoder_norm`), so `vit_checkpoint.py` can copy a
pretrained `.npz` into it one array at a time. Blocks are pre-LayerNorm throughout.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from bit_diffusion import unet


def _attention(num_heads: int, width: int, rngs: nnx.Rngs) -> nnx.MultiHeadAttention:
  return nnx.MultiHeadAttention(num_heads=num_heads, in_features=width, decode=False,
                                deterministic=True, rngs=rngs)


class MlpBlock(nnx.Module):
  """Dense, GELU, Dense (width -> mlp_dim -> width)."""

  def __init__(self, width: int, mlp_dim: int, rngs: nnx.Rngs):
    self.Dense_0 = nnx.Linear(width, mlp_dim, rngs=rngs)
    self.Dense_1 = nnx.Linear(mlp_dim, width, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.Dense_1(jax.nn.gelu(self.Dense_0(x)))


class EncoderBlock(nnx.Module):
  """Pre-LN self-attention and MLP over the image tokens [B, N, D]."""

  def __init__(self, width: int, mlp_dim: int, num_heads: int, rngs: nnx.Rngs):
    self.LayerNorm_0 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
    self.MultiHeadDotProductAttention = _attention(num_heads, width, rngs)
    self.LayerNorm_1 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
    self.MlpBlock = MlpBlock(width, mlp_dim, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.MultiHeadDotProductAttention(self.LayerNorm_0(x))
    return x + self.MlpBlock(self.LayerNorm_1(x))


class ViT(nnx.Module):
  """Vision Transformer without class token: images [B, S, S, 3] -> tokens [B, (S/p)^2, D].

  Pixels (integers 0..255) are scaled to [-1, 1], as big_vision's ViTs expect.
  """

  def __init__(self, *, image_size: int, patch_size: int, width: int, depth: int,
               mlp_dim: int, num_heads: int, rngs: nnx.Rngs):
    if image_size % patch_size:
      raise ValueError(f'image_size {image_size} is not a multiple of patch_size {patch_size}.')
    self.patch_size = patch_size
    self.embedding = nnx.Conv(3, width, (patch_size, patch_size), strides=patch_size,
                              padding='VALID', rngs=rngs)
    num_patches = (image_size // patch_size) ** 2
    self.pos_embedding = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (1, num_patches, width)))
    self.blocks = nnx.List([EncoderBlock(width, mlp_dim, num_heads, rngs)
                            for _ in range(depth)])
    self.encoder_norm = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    x = self.embedding(images.astype(jnp.float32) / 127.5 - 1.0)  # [B, S/p, S/p, D]
    x = x.reshape(x.shape[0], -1, x.shape[-1]) + self.pos_embedding[...]
    for block in self.blocks:
      x = block(x)
    return self.encoder_norm(x)


class DecoderBlock(nnx.Module):
  """Pre-LN self-attention (causal or not), cross-attention to the image, MLP; [B, L, D]."""

  def __init__(self, width: int, mlp_dim: int, num_heads: int, rngs: nnx.Rngs):
    self.self_norm = nnx.LayerNorm(width, rngs=rngs)
    self.self_attention = _attention(num_heads, width, rngs)
    self.cross_norm = nnx.LayerNorm(width, rngs=rngs)
    self.cross_attention = _attention(num_heads, width, rngs)
    self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
    self.mlp = MlpBlock(width, mlp_dim, rngs)

  def __call__(self, x: jax.Array, image: jax.Array, causal: bool) -> jax.Array:
    mask = nnx.make_causal_mask(x[..., 0]) if causal else None
    x = x + self.self_attention(self.self_norm(x), mask=mask)
    x = x + self.cross_attention(self.cross_norm(x), image)
    return x + self.mlp(self.mlp_norm(x))


class Decoder(nnx.Module):
  """Learned positions, `depth` DecoderBlocks, a final LayerNorm: [B, L, D] -> [B, L, D]."""

  def __init__(self, *, max_length: int, image_width: int, width: int, depth: int,
               mlp_dim: int, num_heads: int, causal: bool, rngs: nnx.Rngs):
    self.causal = causal
    self.image_proj = nnx.Linear(image_width, width, rngs=rngs)
    self.pos_embedding = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (1, max_length, width)))
    self.blocks = nnx.List([DecoderBlock(width, mlp_dim, num_heads, rngs)
                            for _ in range(depth)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)

  def __call__(self, x: jax.Array, image: jax.Array) -> jax.Array:
    image = self.image_proj(image)  # [B, N, D]
    x = x + self.pos_embedding[...][:, :x.shape[1]]
    for block in self.blocks:
      x = block(x, image, self.causal)
    return self.norm(x)


class DiffusionCaptioner(nnx.Module):
  """Bit Diffusion captioner: (x_t ++ self_cond [B, L, 2k], gamma [B], images) -> x0 [B, L, k].

  The denoiser protocol of bit_diffusion/methods/bit_diffusion.py: `encode_condition(images)`
  once per batch, `denoise(x, gamma, image_tokens)` at every step; calling the module does both.
  """

  def __init__(self, *, in_channels: int, out_channels: int, max_length: int, image_size: int,
               patch_size: int, encoder_width: int, encoder_depth: int, encoder_mlp_dim: int,
               encoder_heads: int, width: int, depth: int, mlp_dim: int, num_heads: int,
               rngs: nnx.Rngs):
    self.encoder = ViT(image_size=image_size, patch_size=patch_size, width=encoder_width,
                       depth=encoder_depth, mlp_dim=encoder_mlp_dim, num_heads=encoder_heads,
                       rngs=rngs)
    self.bits_in = nnx.Linear(in_channels, width, rngs=rngs)
    self.noise_dense_0 = nnx.Linear(width, width, rngs=rngs)
    self.noise_dense_1 = nnx.Linear(width, width, rngs=rngs)
    self.decoder = Decoder(max_length=max_length, image_width=encoder_width, width=width,
                           depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, causal=False,
                           rngs=rngs)
    self.bits_out = nnx.Linear(width, out_channels, kernel_init=nnx.initializers.zeros_init(),
                               rngs=rngs)
    self.width = width

  def encode_condition(self, images: jax.Array) -> jax.Array:
    """int [B, S, S, 3] -> image tokens float32 [B, N, encoder_width]."""
    return self.encoder(images)

  def denoise(self, x: jax.Array, gamma: jax.Array, image_tokens: jax.Array, *,
              dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """x [B, L, 2k], gamma [B], image tokens [B, N, De] -> x0 prediction [B, L, k]."""
    del dropout_rng  # No dropout: the paper's captioner sets none.
    noise = unet.sinusoidal_embedding(gamma * 1000.0, self.width)  # [B, D], as the U-Net.
    noise = self.noise_dense_1(jax.nn.silu(self.noise_dense_0(noise)))
    h = self.bits_in(x) + noise[:, None, :]
    return self.bits_out(self.decoder(h, image_tokens))

  def __call__(self, x: jax.Array, gamma: jax.Array, images: jax.Array, *,
               dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    return self.denoise(x, gamma, self.encode_condition(images), dropout_rng=dropout_rng)


class AutoregressiveCaptioner(nnx.Module):
  """The baseline: (tokens_in int [B, L], images) -> next-token logits [B, L, vocab].

  tokens_in is the caption shifted right behind a start id (= vocab_size); self-attention is
  causal, so position i sees tokens < i only. The protocol of
  bit_diffusion/methods/autoregressive.py: `encode_condition(images)`, then
  `logits(tokens_in, image_tokens)`.
  """

  def __init__(self, *, vocab_size: int, max_length: int, image_size: int, patch_size: int,
               encoder_width: int, encoder_depth: int, encoder_mlp_dim: int,
               encoder_heads: int, width: int, depth: int, mlp_dim: int, num_heads: int,
               rngs: nnx.Rngs):
    self.encoder = ViT(image_size=image_size, patch_size=patch_size, width=encoder_width,
                       depth=encoder_depth, mlp_dim=encoder_mlp_dim, num_heads=encoder_heads,
                       rngs=rngs)
    self.token_embedding = nnx.Embed(vocab_size + 1, width, rngs=rngs)  # + the start id.
    self.decoder = Decoder(max_length=max_length, image_width=encoder_width, width=width,
                           depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, causal=True,
                           rngs=rngs)
    self.logits_out = nnx.Linear(width, vocab_size, rngs=rngs)
    self.start_id = vocab_size

  def encode_condition(self, images: jax.Array) -> jax.Array:
    return self.encoder(images)

  def logits(self, tokens_in: jax.Array, image_tokens: jax.Array) -> jax.Array:
    return self.logits_out(self.decoder(self.token_embedding(tokens_in), image_tokens))

  def __call__(self, tokens_in: jax.Array, images: jax.Array) -> jax.Array:
    return self.logits(tokens_in, self.encode_condition(images))


def model_kwargs(config) -> dict:
  """The shared constructor arguments of `config.model` and `config.tokenizer`."""
  m = config.model
  return dict(max_length=config.tokenizer.max_length, image_size=config.data.image_size,
              patch_size=m.patch_size, encoder_width=m.encoder_width,
              encoder_depth=m.encoder_depth, encoder_mlp_dim=m.encoder_mlp_dim,
              encoder_heads=m.encoder_heads, width=m.width, depth=m.depth, mlp_dim=m.mlp_dim,
              num_heads=m.num_heads)
