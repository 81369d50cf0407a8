"""Transformer decoders over token positions (Flax NNX), with or without a context to attend to.

The sequence networks of every sequence task: captions (a ViT's image tokens as the context,
`captioning/model.py`) and text (no context, `tasks/text.py`); and GGM's classifier on images,
whose H * W * C values are read as one sequence (`tasks/images.py`).

- `DenoisingTransformer`: Bit Diffusion's denoiser. Non-causal self-attention over the
  positions; it reads the noisy analog bits concatenated with the self-conditioning estimate,
  [B, L, 2k], and the noise level gamma (a sinusoidal embedding of 1000 gamma, as the image
  U-Net), and predicts the bits' x0, [B, L, k] (paper Sec. 4.3: a 6-layer, 512-wide decoder).
- `AutoregressiveTransformer`: the baseline of the same width and depth with causal
  self-attention, token embeddings in and vocabulary logits out. `init_cache` and `logits_step`
  decode one position at a time from cached keys and values, so generating L tokens costs L
  single-position passes instead of L passes over the whole prefix.
- `GlauberTransformer`: the Glauber Generative Model's classifier (`ggm.py`). Non-causal, token
  embeddings of the vocabulary plus the symbol phi that marks the classified positions, the
  step as a sinusoidal time embedding (plus a label embedding for class-conditional images, or
  cross-attention to an encoder's tokens for captions), and one logit per vocabulary entry at
  every position.

Blocks are pre-LayerNorm. With a context, each block cross-attends to it after self-attention.
Positions enter either as a learned embedding added to the input ('learned', the paper's
captioner) or as rotary embeddings of the self-attention queries and keys ('rotary', Su et al.
2021, RoFormer), which make attention scores depend on relative offsets from the first step.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from bit_diffusion import unet

# One layer's cached keys and values, each [B, L, heads, head_dim].
LayerCache = tuple[jax.Array, jax.Array]
POSITIONS = ('learned', 'rotary')
# What GGM's classifier multiplies its token embeddings by (`GlauberTransformer`).
TOKEN_SCALES = ('sqrt_width', 'one')


def rotate(x: jax.Array, positions: jax.Array) -> jax.Array:
  """Rotary position embedding (RoFormer, Su et al. 2021, Eq. 34): x [B, L, H, D] (D even),
  positions [L] -> x with each pair (x_i, x_{i + D/2}) rotated by the angle
  position * 10000**(-2i / D). Then q(m) . k(n) depends on m - n only."""
  half = x.shape[-1] // 2
  frequencies = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * frequencies[None, :]  # [L, D/2]
  sin, cos = jnp.sin(angles)[:, None, :], jnp.cos(angles)[:, None, :]  # [L, 1, D/2]
  first, second = x[..., :half], x[..., half:]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


def rotary_attention(query: jax.Array, key: jax.Array, value: jax.Array, **kwargs) -> jax.Array:
  """nnx.dot_product_attention with queries and keys rotated by their positions 0..L-1 (an
  `attention_fn` of nnx.MultiHeadAttention, for self-attention)."""
  positions = jnp.arange(query.shape[-3])
  return nnx.dot_product_attention(rotate(query, positions), rotate(key, positions), value,
                                   **kwargs)


def attention(num_heads: int, width: int, rngs: nnx.Rngs,
              rotary: bool = False) -> nnx.MultiHeadAttention:
  return nnx.MultiHeadAttention(
      num_heads=num_heads, in_features=width, decode=False, deterministic=True,
      attention_fn=rotary_attention if rotary else nnx.dot_product_attention, rngs=rngs)


class MlpBlock(nnx.Module):
  """Dense, GELU, Dense (width -> mlp_dim -> width)."""

  def __init__(self, width: int, mlp_dim: int, rngs: nnx.Rngs):
    self.Dense_0 = nnx.Linear(width, mlp_dim, rngs=rngs)
    self.Dense_1 = nnx.Linear(mlp_dim, width, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.Dense_1(jax.nn.gelu(self.Dense_0(x)))


class DecoderBlock(nnx.Module):
  """Pre-LN self-attention (causal or not), cross-attention to the context if any, MLP;
  [B, L, D] -> [B, L, D]."""

  def __init__(self, width: int, mlp_dim: int, num_heads: int, cross_attention: bool,
               rngs: nnx.Rngs, rotary: bool = False):
    self.self_norm = nnx.LayerNorm(width, rngs=rngs)
    self.self_attention = attention(num_heads, width, rngs, rotary)
    self.rotary = rotary
    if cross_attention:
      self.cross_norm = nnx.LayerNorm(width, rngs=rngs)
      self.cross_attention = attention(num_heads, width, rngs)
    self.has_cross_attention = cross_attention
    self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
    self.mlp = MlpBlock(width, mlp_dim, rngs)

  def __call__(self, x: jax.Array, context: Optional[jax.Array], causal: bool) -> jax.Array:
    mask = nnx.make_causal_mask(x[..., 0]) if causal else None
    x = x + self.self_attention(self.self_norm(x), mask=mask)
    return self._cross_and_mlp(x, context)

  def _cross_and_mlp(self, x: jax.Array, context: Optional[jax.Array]) -> jax.Array:
    if self.has_cross_attention:
      x = x + self.cross_attention(self.cross_norm(x), context)
    return x + self.mlp(self.mlp_norm(x))

  def decode_step(self, x: jax.Array, context: Optional[jax.Array], cache: LayerCache,
                  index: jax.Array) -> tuple[jax.Array, LayerCache]:
    """Position `index` only, causal: x [B, 1, D] -> ([B, 1, D], the cache with this
    position's keys and values written in). Equals row `index` of __call__(causal=True) when
    the cache holds the keys and values of positions < index."""
    attn = self.self_attention
    h = self.self_norm(x)
    query, key = attn.query(h), attn.key(h)
    if self.rotary:  # The cache holds rotated keys.
      query, key = rotate(query, index[None]), rotate(key, index[None])
    keys = jax.lax.dynamic_update_slice_in_dim(cache[0], key.astype(cache[0].dtype), index, axis=1)
    values = jax.lax.dynamic_update_slice_in_dim(cache[1], attn.value(h).astype(cache[1].dtype),
                                                 index, axis=1)
    visible = (jnp.arange(keys.shape[1]) <= index)[None, None, None, :]  # [1, 1, 1, L]
    y = nnx.dot_product_attention(query, keys, values, mask=visible)
    x = x + attn.out(y)
    return self._cross_and_mlp(x, context), (keys, values)


class Decoder(nnx.Module):
  """Positions, `depth` DecoderBlocks, a final LayerNorm: [B, L, D] -> [B, L, D].

  context_width > 0: every block cross-attends to a context [B, N, context_width] (projected to
  the width; captioning's image tokens); 0: no context (text). positions: 'learned' (an
  embedding [1, max_length, D] added to the input) or 'rotary' (in every self-attention).
  """

  def __init__(self, *, max_length: int, context_width: int, width: int, depth: int,
               mlp_dim: int, num_heads: int, causal: bool, rngs: nnx.Rngs,
               positions: str = 'learned'):
    if positions not in POSITIONS:
      raise ValueError(f'Unknown model.positions={positions!r}; choose one of {POSITIONS}.')
    self.causal = causal
    self.num_heads = num_heads
    self.max_length = max_length
    self.width = width
    if context_width:
      self.image_proj = nnx.Linear(context_width, width, rngs=rngs)
    self.has_context = bool(context_width)
    self.learned_positions = positions == 'learned'
    if self.learned_positions:
      self.pos_embedding = nnx.Param(
          nnx.initializers.normal(0.02)(rngs.params(), (1, max_length, width)))
    rotary = positions == 'rotary'
    self.blocks = nnx.List([DecoderBlock(width, mlp_dim, num_heads, bool(context_width), rngs,
                                         rotary) for _ in range(depth)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)

  def _project(self, context: Optional[jax.Array]) -> Optional[jax.Array]:
    return self.image_proj(context) if self.has_context else None

  def __call__(self, x: jax.Array, context: Optional[jax.Array]) -> jax.Array:
    context = self._project(context)  # [B, N, D] or None.
    if self.learned_positions:
      x = x + self.pos_embedding[...][:, :x.shape[1]]
    for block in self.blocks:
      x = block(x, context, self.causal)
    return self.norm(x)

  def init_cache(self, batch: int, dtype=jnp.float32) -> list[LayerCache]:
    """Empty keys and values of every layer, each [batch, max_length, heads, head_dim]."""
    shape = (batch, self.max_length, self.num_heads, self.width // self.num_heads)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks]

  def decode_step(self, x: jax.Array, context: Optional[jax.Array], cache: list[LayerCache],
                  index: jax.Array) -> tuple[jax.Array, list[LayerCache]]:
    """Causal decoding of position `index`: x [B, 1, D] -> ([B, 1, D], updated cache)."""
    context = self._project(context)
    if self.learned_positions:
      x = x + jax.lax.dynamic_slice_in_dim(self.pos_embedding[...], index, 1, axis=1)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache):
      x, layer_cache = block.decode_step(x, context, layer_cache, index)
      new_cache.append(layer_cache)
    return self.norm(x), new_cache


class DenoisingTransformer(nnx.Module):
  """Bit Diffusion's sequence denoiser: (x_t ++ self_cond [B, L, 2k], gamma [B] or [B, L],
  cond) -> x0 [B, L, k], non-causal.

  encoder: a module turning the condition into context tokens [B, N, De] (captioning's ViT),
  or None for an unconditional model (text), whose condition is ignored. The denoiser protocol
  of bit_diffusion/methods/bit_diffusion.py: `encode_condition(cond)` once per batch,
  `denoise(x, gamma, context)` at every step; calling the module does both.
  """

  def __init__(self, *, in_channels: int, out_channels: int, max_length: int, width: int,
               depth: int, mlp_dim: int, num_heads: int, encoder: Optional[nnx.Module] = None,
               encoder_width: int = 0, positions: str = 'learned', rngs: nnx.Rngs):
    if encoder is not None:
      self.encoder = encoder
    self.has_encoder = encoder is not None
    self.bits_in = nnx.Linear(in_channels, width, rngs=rngs)
    self.noise_dense_0 = nnx.Linear(width, width, rngs=rngs)
    self.noise_dense_1 = nnx.Linear(width, width, rngs=rngs)
    self.decoder = Decoder(max_length=max_length, context_width=encoder_width, width=width,
                           depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, causal=False,
                           positions=positions, rngs=rngs)
    self.bits_out = nnx.Linear(width, out_channels, kernel_init=nnx.initializers.zeros_init(),
                               rngs=rngs)
    self.width = width

  def encode_condition(self, cond) -> Optional[jax.Array]:
    """The condition -> context tokens float32 [B, N, De]; None without an encoder."""
    return self.encoder(cond) if self.has_encoder else None

  def denoise(self, x: jax.Array, gamma: jax.Array, context: Optional[jax.Array], *,
              dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """x [B, L, 2k], gamma [B] (or [B, L]: a level per position), context [B, N, De] or None
    -> x0 prediction [B, L, k]."""
    del dropout_rng  # No dropout: the paper's captioner sets none.
    levels = gamma.reshape(-1) * 1000.0
    noise = unet.sinusoidal_embedding(levels, self.width)  # As the U-Net.
    noise = self.noise_dense_1(jax.nn.silu(self.noise_dense_0(noise)))
    noise = noise.reshape(gamma.shape + (self.width,))  # [B, D] or [B, L, D].
    if gamma.ndim == 1:
      noise = noise[:, None, :]
    h = self.bits_in(x) + noise
    return self.bits_out(self.decoder(h, context))

  def __call__(self, x: jax.Array, gamma: jax.Array, cond, *,
               dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    return self.denoise(x, gamma, self.encode_condition(cond), dropout_rng=dropout_rng)


class AutoregressiveTransformer(nnx.Module):
  """The baseline: (tokens_in int [B, L], cond) -> next-token logits [B, L, vocab], causal.

  tokens_in is the sequence shifted right behind a start id (= vocab_size), so position i sees
  tokens < i only. The protocol of bit_diffusion/methods/autoregressive.py:
  `encode_condition(cond)`, then `logits(tokens_in, context)`, or position by position
  `init_cache(batch)` and `logits_step(token_in, context, cache, index)`.
  """

  def __init__(self, *, vocab_size: int, max_length: int, width: int, depth: int, mlp_dim: int,
               num_heads: int, encoder: Optional[nnx.Module] = None, encoder_width: int = 0,
               positions: str = 'learned', rngs: nnx.Rngs):
    if encoder is not None:
      self.encoder = encoder
    self.has_encoder = encoder is not None
    self.token_embedding = nnx.Embed(vocab_size + 1, width, rngs=rngs)  # + the start id.
    self.decoder = Decoder(max_length=max_length, context_width=encoder_width, width=width,
                           depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, causal=True,
                           positions=positions, rngs=rngs)
    self.logits_out = nnx.Linear(width, vocab_size, rngs=rngs)
    self.start_id = vocab_size

  def encode_condition(self, cond) -> Optional[jax.Array]:
    return self.encoder(cond) if self.has_encoder else None

  def logits(self, tokens_in: jax.Array, context: Optional[jax.Array]) -> jax.Array:
    """tokens_in int [B, L] -> logits [B, L, vocab] (teacher forcing, all positions at once)."""
    return self.logits_out(self.decoder(self.token_embedding(tokens_in), context))

  def init_cache(self, batch: int) -> list[LayerCache]:
    return self.decoder.init_cache(batch)

  def logits_step(self, token_in: jax.Array, context: Optional[jax.Array],
                  cache: list[LayerCache], index: jax.Array
                  ) -> tuple[jax.Array, list[LayerCache]]:
    """token_in int [B] at position `index` (the token at index - 1, or the start id) ->
    (logits [B, vocab] for position index, the updated cache)."""
    h, cache = self.decoder.decode_step(self.token_embedding(token_in[:, None]), context, cache,
                                        index)
    return self.logits_out(h[:, 0]), cache

  def __call__(self, tokens_in: jax.Array, cond) -> jax.Array:
    return self.logits(tokens_in, self.encode_condition(cond))


class GlauberTransformer(nnx.Module):
  """GGM's classifier: (tokens_in int [B, L] in [0, vocab] with phi = vocab, time [B] in [0, 1),
  cond) -> logits [B, L, vocab] of D_t(a, x_{-i}) at each position holding phi; non-causal.

  The time (step t / T) enters as a sinusoidal embedding of 1000 t / T through a 2-layer MLP,
  added to every token embedding (as `DenoisingTransformer` adds its noise level). The
  condition, by how the network was built:
  - num_classes > 0: cond is the labels int [B]; a label embedding (num_classes rows, no null
    label: GGM has no guidance) is added to the time embedding, as the U-Net adds its label
    embedding to the noise embedding;
  - encoder (captioning's ViT): cond is what it encodes (images), and every block
    cross-attends to its tokens [B, N, encoder_width], as the captioners' decoders do;
  - neither: the condition is ignored (text, unconditional images), as the denoisers ignore it.
  The protocol of `methods/ggm.py`: `encode_condition(cond)` once per batch, then
  `classify(tokens_in, time, encoded)` at every step; calling the module does both.

  token_scale: 'one' adds the token embeddings as initialised, with a norm of about 1 against
  about 4 for the time embedding; 'sqrt_width' multiplies them by sqrt(width) first (Vaswani et
  al. 2017, Sec. 3.4). The classified position's own input is phi, so all the classifier knows
  of the data comes from the other positions' embeddings: on text, 'one' learned nothing of the
  context and 'sqrt_width' did; on the digits, whose labels and positions carry most of what is
  learnt, 'one' scores better (docs/reference.md, "GGM reads its context").
  """

  def __init__(self, *, vocab_size: int, max_length: int, width: int, depth: int, mlp_dim: int,
               num_heads: int, positions: str = 'learned', num_classes: int = 0,
               encoder: Optional[nnx.Module] = None, encoder_width: int = 0,
               token_scale: str = 'one', rngs: nnx.Rngs):
    if token_scale not in TOKEN_SCALES:
      raise ValueError(f'Unknown ggm.token_scale={token_scale!r}; choose one of {TOKEN_SCALES}.')
    self.token_scale = width ** 0.5 if token_scale == 'sqrt_width' else 1.0
    if encoder is not None:
      self.encoder = encoder
    self.has_encoder = encoder is not None
    self.token_embedding = nnx.Embed(vocab_size + 1, width, rngs=rngs)  # + phi.
    self.time_dense_0 = nnx.Linear(width, width, rngs=rngs)
    self.time_dense_1 = nnx.Linear(width, width, rngs=rngs)
    if num_classes:
      self.label_embedding = nnx.Embed(num_classes, width, rngs=rngs)
    self.num_classes = num_classes
    self.decoder = Decoder(max_length=max_length, context_width=encoder_width, width=width,
                           depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, causal=False,
                           positions=positions, rngs=rngs)
    self.logits_out = nnx.Linear(width, vocab_size, kernel_init=nnx.initializers.zeros_init(),
                                 rngs=rngs)
    self.phi = vocab_size
    self.width = width

  def encode_condition(self, cond=None) -> tuple[Optional[jax.Array], Optional[jax.Array]]:
    """The condition -> (label embedding [B, D] or None, context tokens [B, N, De] or None)."""
    if self.num_classes and cond is None:
      raise ValueError(f'This GGM classifier was built with num_classes={self.num_classes}; it '
                       'needs labels [B], got none.')
    labels = self.label_embedding(cond) if self.num_classes else None
    return labels, (self.encoder(cond) if self.has_encoder else None)

  def classify(self, tokens_in: jax.Array, time: jax.Array,
               encoded: tuple[Optional[jax.Array], Optional[jax.Array]]) -> jax.Array:
    """tokens_in int [B, L], time [B], encode_condition's output -> logits [B, L, vocab]."""
    labels, context = encoded
    embedding = unet.sinusoidal_embedding(time * 1000.0, self.width)  # [B, D]
    embedding = self.time_dense_1(jax.nn.silu(self.time_dense_0(embedding)))
    if labels is not None:
      embedding = embedding + labels
    h = self.token_embedding(tokens_in) * self.token_scale + embedding[:, None, :]
    return self.logits_out(self.decoder(h, context))

  def __call__(self, tokens_in: jax.Array, time: jax.Array, cond=None) -> jax.Array:
    return self.classify(tokens_in, time, self.encode_condition(cond))
