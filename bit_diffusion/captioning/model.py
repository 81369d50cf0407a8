"""The captioning networks (Flax NNX): a ViT image encoder and a Transformer caption decoder.

Paper Sec. 4.3: an image encoder plus a randomly initialised 6-layer, 512-wide Transformer
decoder with non-causal self-attention over the caption positions, cross-attending to the image
tokens. The diffusion decoder reads the noisy analog bits of the caption concatenated with the
self-conditioning estimate, [B, L, 2k], and the noise level gamma (a sinusoidal embedding of
1000 gamma, as the image U-Net), and predicts the bits' x0, [B, L, k].

The autoregressive baseline is the same encoder and decoder stack with causal self-attention,
token embeddings in and vocabulary logits out; the Glauber Generative Model's classifier is the
non-causal stack with token embeddings (plus phi) and a time embedding in, vocabulary logits
out. The decoders are `bit_diffusion/transformer.py`'s
(shared with the text task, which has no image); this module adds the ViT.

Module and parameter names of the encoder follow the big_vision / AugReg ViT (`embedding`,
`pos_embedding`, per block `LayerNorm_0`, `MultiHeadDotProductAttention`, `LayerNorm_1`,
`MlpBlock` with `Dense_0`/`Dense_1`, then `encoder_norm`), so `vit_checkpoint.py` can copy a
pretrained `.npz` into it one array at a time. Blocks are pre-LayerNorm throughout.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from bit_diffusion import transformer


class EncoderBlock(nnx.Module):
  """Pre-LN self-attention and MLP over the image tokens [B, N, D]."""

  def __init__(self, width: int, mlp_dim: int, num_heads: int, rngs: nnx.Rngs):
    self.LayerNorm_0 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
    self.MultiHeadDotProductAttention = transformer.attention(num_heads, width, rngs)
    self.LayerNorm_1 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
    self.MlpBlock = transformer.MlpBlock(width, mlp_dim, rngs)

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


def _vit(rngs: nnx.Rngs, *, image_size: int, patch_size: int, encoder_width: int,
         encoder_depth: int, encoder_mlp_dim: int, encoder_heads: int) -> ViT:
  return ViT(image_size=image_size, patch_size=patch_size, width=encoder_width,
             depth=encoder_depth, mlp_dim=encoder_mlp_dim, num_heads=encoder_heads, rngs=rngs)


class DiffusionCaptioner(transformer.DenoisingTransformer):
  """Bit Diffusion captioner: (x_t ++ self_cond [B, L, 2k], gamma [B], images) -> x0 [B, L, k].

  The sequence denoiser (`transformer.DenoisingTransformer`) with a ViT encoder of the images
  (int [B, S, S, 3]) as its context.
  """

  def __init__(self, *, in_channels: int, out_channels: int, max_length: int, image_size: int,
               patch_size: int, encoder_width: int, encoder_depth: int, encoder_mlp_dim: int,
               encoder_heads: int, width: int, depth: int, mlp_dim: int, num_heads: int,
               rngs: nnx.Rngs):
    encoder = _vit(rngs, image_size=image_size, patch_size=patch_size,
                   encoder_width=encoder_width, encoder_depth=encoder_depth,
                   encoder_mlp_dim=encoder_mlp_dim, encoder_heads=encoder_heads)
    super().__init__(in_channels=in_channels, out_channels=out_channels, max_length=max_length,
                     width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
                     encoder=encoder, encoder_width=encoder_width, rngs=rngs)


class _TokenDecoderWithViT:
  """The constructor shared by the token-input captioners: builds the ViT encoder of the images
  and hands it, with the decoder's sizes and its own arguments (`decoder_kwargs`: GGM's
  token_scale), to the decoder class that follows in the MRO."""

  def __init__(self, *, vocab_size: int, max_length: int, image_size: int, patch_size: int,
               encoder_width: int, encoder_depth: int, encoder_mlp_dim: int,
               encoder_heads: int, width: int, depth: int, mlp_dim: int, num_heads: int,
               rngs: nnx.Rngs, **decoder_kwargs):
    encoder = _vit(rngs, image_size=image_size, patch_size=patch_size,
                   encoder_width=encoder_width, encoder_depth=encoder_depth,
                   encoder_mlp_dim=encoder_mlp_dim, encoder_heads=encoder_heads)
    super().__init__(vocab_size=vocab_size, max_length=max_length, width=width, depth=depth,
                     mlp_dim=mlp_dim, num_heads=num_heads, encoder=encoder,
                     encoder_width=encoder_width, rngs=rngs, **decoder_kwargs)


class AutoregressiveCaptioner(_TokenDecoderWithViT, transformer.AutoregressiveTransformer):
  """The baseline: (tokens_in int [B, L], images) -> next-token logits [B, L, vocab].

  The causal decoder (`transformer.AutoregressiveTransformer`) with the same ViT encoder.
  """


class GlauberCaptioner(_TokenDecoderWithViT, transformer.GlauberTransformer):
  """The Glauber Generative Model's classifier for captions: (tokens_in int [B, L] with phi =
  vocab_size at the classified positions, time [B], images) -> logits [B, L, vocab].

  GGM's non-causal classifier (`transformer.GlauberTransformer`) with the same ViT encoder, its
  image tokens the context every block cross-attends to; encoded once per sampled batch.
  """


def model_kwargs(config) -> dict:
  """The shared constructor arguments of `config.model` and `config.tokenizer`."""
  m = config.model
  return dict(max_length=config.tokenizer.max_length, image_size=config.data.image_size,
              patch_size=m.patch_size, encoder_width=m.encoder_width,
              encoder_depth=m.encoder_depth, encoder_mlp_dim=m.encoder_mlp_dim,
              encoder_heads=m.encoder_heads, width=m.width, depth=m.depth, mlp_dim=m.mlp_dim,
              num_heads=m.num_heads)
