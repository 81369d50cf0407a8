"""The paper's U-Net denoiser, in Flax NNX (Chen et al. 2023, Sec. 4 and Appendix).

The architecture follows the authors' `TransUNet` (google-research/pix2seq,
`architectures/transunet.py`) with its transformer turned off, as the paper's image models are:

- noise embedding: sinusoids of `gamma * 1000` (width `base_channels`), Dense, SiLU, Dense to
  `4 * base_channels`, an optional class embedding added, then SiLU;
- `conv_in` (3x3) followed by a GroupNorm;
- down path: per stage `num_res_blocks` residual blocks, each followed by self-attention when the
  feature map is in `attention_resolutions` (channels // head_dim heads of width head_dim, 64 in
  the authors' code); a stride-2 3x3 conv between stages. Every residual block output (taken
  before its attention, as in the authors' code) and every downsampled map is kept as a skip
  connection;
- no middle block;
- up path (as DDPM, Ho et al. 2020): per stage `num_res_blocks + 1` residual blocks, each
  consuming one skip by concatenation, with the same attention placement; nearest 2x upsampling
  and a 3x3 conv between stages;
- GroupNorm, SiLU, conv (zero-initialised) to `out_channels`: 3x3, or 1x1 for the softmax
  output's logits (the authors' `outp_softmax_groups > 0` branch).

Residual and attention branches are summed with their input and scaled by 1/sqrt(2). Layout is
NHWC throughout. Parameters are float32; `dtype` is the compute dtype. Not in the paper, off by
default: a cross-attention layer after each self-attention and an offset added to the noise
embedding, through which DisCo-Diff's latents enter (`latent_unet.py`).
"""

import math
from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Initialisers of the authors' code: VarianceScaling(1.0, 'fan_avg', 'uniform'), and ~0 (1e-10)
# for the last conv of each residual block and for the output conv.
_default_init = nnx.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
_zero_init = nnx.initializers.zeros_init()
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_NOISE_SCALE = 1000.0  # gamma in [0, 1] is embedded as gamma * 1000 (authors' time_scaling).


def count_params(model_or_state) -> int:
  """Number of parameter scalars in an NNX module (its `nnx.Param`s) or in any pytree of arrays.

  Works on abstract models from `nnx.eval_shape` too (leaves with a `.shape`).
  """
  if isinstance(model_or_state, nnx.Module):
    model_or_state = nnx.state(model_or_state, nnx.Param)
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(model_or_state))


def num_groups(channels: int) -> int:
  """GroupNorm group count: 32, or fewer for narrow layers (at least 4 channels per group)."""
  limit = max(1, min(32, channels // 4))
  return max(g for g in range(1, limit + 1) if channels % g == 0)


def sinusoidal_embedding(x: jax.Array, dim: int) -> jax.Array:
  """Transformer sinusoids of a scalar per example, as pix2seq's `positional_encoding`.

  Args:
    x: [batch] float.
    dim: embedding width.

  Returns:
    [batch, dim] float32: sin of the ceil(dim / 2) frequencies 10000**(-2k / dim), then cos.
  """
  i = jnp.arange(dim)
  rates = 10000.0 ** (-2.0 * (i // 2) / dim)
  angles = x.astype(jnp.float32)[:, None] * rates[None, :]
  return jnp.concatenate([jnp.sin(angles[:, 0::2]), jnp.cos(angles[:, 1::2])], axis=-1)


class GroupNorm(nnx.Module):
  """GroupNorm (Wu & He 2018) with an optional per-example FiLM folded into its affine map.

  Equal to `nnx.GroupNorm` followed by the FiLM `* (1 + film_scale) + film_shift`, to float32
  rounding, with the same parameters (`scale` and `bias`, [channels]). The statistics are float32
  sums of x and x^2 per channel over the pixels, then per group; they and the FiLM fold into a
  per-example, per-channel scale `a` and offset `b`, and the output is `x * a + b`. Why it is
  written out: docs/cpu.md, "GroupNorm statistics as per-channel sums".
  """

  def __init__(self, channels: int, num_groups: int, epsilon: float, dtype, rngs: nnx.Rngs):
    del rngs  # Deterministic initialisation: scale 1, bias 0.
    if channels % num_groups:
      raise ValueError(f'num_groups={num_groups} does not divide channels={channels}.')
    self.num_groups = num_groups
    self.epsilon = epsilon
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

  def __call__(self, x: jax.Array, film_scale: jax.Array | None = None,
               film_shift: jax.Array | None = None) -> jax.Array:
    """x: [b, h, w, c]; film_scale, film_shift: [b, c] or None. Returns [b, h, w, c] in dtype.

    Computes GroupNorm(x) * scale + bias, times (1 + film_scale) plus film_shift when given.
    """
    b, h, w, c = x.shape
    g = self.num_groups
    x = x.astype(jnp.float32)
    # Per-channel sums over the pixels first, then over each group's channels: the same sums as
    # one reduction over (pixels, group channels) (docs/cpu.md).
    count = h * w * (c // g)
    group_sum = jnp.sum(x, axis=(1, 2)).reshape(b, g, c // g).sum(axis=2)  # [b, g]
    group_square_sum = jnp.sum(jnp.square(x), axis=(1, 2)).reshape(b, g, c // g).sum(axis=2)
    mean = group_sum / count
    variance = jnp.maximum(group_square_sum / count - jnp.square(mean), 0.0)  # As nnx.GroupNorm.
    inverse_std = jax.lax.rsqrt(variance + self.epsilon)
    scale = jnp.broadcast_to(self.scale[...], (b, c))
    bias = jnp.broadcast_to(self.bias[...], (b, c))
    if film_scale is not None:  # (z * scale + bias) * (1 + s) + t, folded into scale and bias.
      scale = scale * (1.0 + film_scale.astype(jnp.float32))
      bias = bias * (1.0 + film_scale.astype(jnp.float32)) + film_shift.astype(jnp.float32)
    a = (inverse_std[:, :, None] * scale.reshape(b, g, c // g)).reshape(b, c)
    offset = bias - jnp.repeat(mean, c // g, axis=1) * a
    y = x * a[:, None, None, :] + offset[:, None, None, :]
    return y.astype(self.dtype)


def _group_norm(channels: int, dtype, rngs: nnx.Rngs) -> GroupNorm:
  return GroupNorm(channels, num_groups(channels), epsilon=1e-5, dtype=dtype, rngs=rngs)


def _conv(in_ch: int, out_ch: int, kernel: int, dtype, rngs: nnx.Rngs, *, strides: int = 1,
          kernel_init=_default_init) -> nnx.Conv:
  return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=strides, padding='SAME', dtype=dtype,
                  kernel_init=kernel_init, rngs=rngs)


def _pointwise(conv: nnx.Conv, x: jax.Array) -> jax.Array:
  """A 1x1 `nnx.Conv` applied as a matrix product over the channels: [b, h, w, c] -> [b, h, w, o].

  The same parameters and result as `conv(x)`; why: docs/cpu.md, "1x1 convolutions as matrix
  products".
  """
  kernel = conv.kernel[...]  # [1, 1, c, o]
  y = jnp.einsum('bhwc,co->bhwo', x.astype(conv.dtype), kernel[0, 0].astype(conv.dtype))
  return y + conv.bias[...].astype(conv.dtype)


def _upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling: [b, h, w, c] -> [b, 2h, 2w, c]."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class ResBlock(nnx.Module):
  """GroupNorm, SiLU, conv3x3, FiLM from the embedding, SiLU, dropout, conv3x3; scaled residual."""

  def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, dtype,
               rngs: nnx.Rngs):
    self.norm0 = _group_norm(in_channels, dtype, rngs)
    self.conv0 = _conv(in_channels, out_channels, 3, dtype, rngs)
    self.emb_proj = nnx.Linear(emb_dim, 2 * out_channels, dtype=dtype, kernel_init=_default_init,
                               rngs=rngs)
    self.norm1 = _group_norm(out_channels, dtype, rngs)
    self.dropout = nnx.Dropout(dropout)
    self.conv1 = _conv(out_channels, out_channels, 3, dtype, rngs, kernel_init=_zero_init)
    self.shortcut = (_conv(in_channels, out_channels, 1, dtype, rngs)
                     if in_channels != out_channels else None)

  def __call__(self, x: jax.Array, emb: jax.Array, dropout_rng=None) -> jax.Array:
    """x: [b, h, w, in_channels]; emb: [b, emb_dim] (after SiLU). Returns [b, h, w, out]."""
    h = self.conv0(nnx.silu(self.norm0(x)))
    scale, shift = jnp.split(self.emb_proj(emb), 2, axis=-1)  # FiLM: [b, out] each.
    h = nnx.silu(self.norm1(h, scale, shift))  # = norm1(h) * (1 + scale) + shift.
    h = self.dropout(h, deterministic=dropout_rng is None, rngs=dropout_rng)
    h = self.conv1(h)
    skip = x if self.shortcut is None else _pointwise(self.shortcut, x)
    return (skip + h) * _INV_SQRT2


class SelfAttention(nnx.Module):
  """GroupNorm, multi-head self-attention over the h * w positions, projection; scaled residual.

  As the authors' `tf.keras.layers.MultiHeadAttention(num_heads=channels // per_head_dim,
  key_dim=per_head_dim)`: `num_heads = channels // head_dim` heads, each head_dim wide, so the
  attention is num_heads * head_dim wide (= channels when head_dim divides them) and `proj` maps
  it back to the channels. Fewer channels than head_dim would leave no head: ValueError.
  """

  def __init__(self, channels: int, head_dim: int, dtype, rngs: nnx.Rngs):
    if head_dim < 1:
      raise ValueError(f'head_dim={head_dim}: the width of an attention head must be >= 1.')
    if channels < head_dim:
      raise ValueError(
          f'Self-attention over {channels} channels with head_dim={head_dim} has '
          f'{channels} // {head_dim} = 0 heads. Set head_dim to at most {channels} (e.g. '
          f'{channels} for one head), or widen the layer.')
    self.num_heads = channels // head_dim
    self.head_dim = head_dim
    width = self.num_heads * head_dim
    self.norm = _group_norm(channels, dtype, rngs)
    self.qkv = nnx.Linear(channels, 3 * width, dtype=dtype, kernel_init=_default_init, rngs=rngs)
    self.proj = nnx.Linear(width, channels, dtype=dtype, kernel_init=_default_init, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [b, h, w, c] -> [b, h, w, c]."""
    b, h, w, c = x.shape
    n, d = self.num_heads, self.head_dim
    qkv = self.qkv(self.norm(x)).reshape(b, h * w, 3, n, d)  # [b, hw, q/k/v, heads, head_dim]
    # Softmax(q k^T / sqrt(head_dim)) v per head, as Keras' MultiHeadAttention.
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])  # [b, hw, n, d]
    y = self.proj(y.reshape(b, h, w, n * d))
    return (x + y) * _INV_SQRT2


class UNetBlock(nnx.Module):
  """A residual block, optionally followed by self-attention and then by a cross-attention
  layer `cross` that reads a context (DisCo-Diff's latent tokens, `latent_unet.py`)."""

  def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float,
               attention: bool, head_dim: int, dtype, rngs: nnx.Rngs,
               cross: nnx.Module | None = None):
    self.res = ResBlock(in_channels, out_channels, emb_dim, dropout, dtype, rngs)
    self.attn = SelfAttention(out_channels, head_dim, dtype, rngs) if attention else None
    self.cross = cross

  def __call__(self, x: jax.Array, emb: jax.Array, dropout_rng=None, context=None):
    """x: [b, h, w, c_in] -> (output [b, h, w, c_out], residual-block output before attention)."""
    h = self.res(x, emb, dropout_rng)
    out = h if self.attn is None else self.attn(h)
    return (out if self.cross is None else self.cross(out, context)), h


class UNet(nnx.Module):
  """The paper's U-Net: x [b, h, w, in_channels], gamma [b] -> [b, h, w, out_channels] float32."""

  def __init__(self, *, in_channels: int, out_channels: int, image_size: int,
               base_channels: int, channel_multipliers: Sequence[int], num_res_blocks: int,
               attention_resolutions: Sequence[int], head_dim: int = 64, dropout: float = 0.0,
               num_classes: int = 0, out_kernel_size: int = 3, dtype=jnp.float32,
               cross_attention: Callable[[int], nnx.Module] | None = None, rngs: nnx.Rngs):
    """Builds the network.

    Args:
      in_channels: input channels (noisy analog bits plus the self-conditioning estimate).
      out_channels: output channels (analog bits, or logits for a softmax output).
      image_size: height = width of the inputs; must be divisible by 2**(num_stages - 1).
      base_channels: channels of the first stage; the noise embedding is 4x as wide.
      channel_multipliers: one entry per stage; stage s has base_channels * multiplier[s].
      num_res_blocks: residual blocks per stage on the way down (one more on the way up).
      attention_resolutions: feature-map sizes (e.g. 16 for 16x16) that get self-attention.
      head_dim: width of an attention head; each attention layer has channels // head_dim
        heads (the authors' per_head_dim, 64). Must not exceed the channels of any attention
        layer.
      dropout: dropout rate inside residual blocks (active only with a `dropout_rng`).
      num_classes: > 0 adds a label embedding with num_classes + 1 rows; label num_classes is
        the null label (no class, for classifier-free guidance).
      out_kernel_size: kernel size of the zero-initialised output conv: 3, or 1 for the softmax
        output's logits (as the authors' code).
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
      cross_attention: (channels) -> a layer `layer(h [b, h, w, channels], context)` placed
        after every self-attention layer (DisCo-Diff's cross-attention to its latents,
        `latent_unet.py`); None: none, the paper's U-Net.
      rngs: parameter initialisation randomness (not kept for dropout).
    """
    multipliers = tuple(int(m) for m in channel_multipliers)
    if not multipliers:
      raise ValueError('channel_multipliers is empty: give one multiplier per stage, e.g. (1, 2).')
    if num_res_blocks < 1:
      raise ValueError(f'num_res_blocks={num_res_blocks}: need at least 1 block per stage.')
    if num_classes < 0:
      raise ValueError(f'num_classes={num_classes}: use 0 (unconditional) or a positive count.')
    num_stages = len(multipliers)
    factor = 2 ** (num_stages - 1)
    if image_size % factor:
      raise ValueError(
          f'image_size={image_size} is not divisible by 2**(len(channel_multipliers) - 1) = '
          f'{factor}: {num_stages} stages halve the size {num_stages - 1} times. Use fewer '
          f'channel_multipliers or an image size that is a multiple of {factor}.')
    resolutions = [image_size // 2**s for s in range(num_stages)]
    channels = [base_channels * m for m in multipliers]
    missing = sorted(set(int(r) for r in attention_resolutions) - set(resolutions))
    if missing:
      raise ValueError(
          f'attention_resolutions {missing} never occur: the stage resolutions of this U-Net '
          f'(image_size={image_size}, {num_stages} stages) are {resolutions}. Pick attention '
          f'resolutions among them.')
    attention = [r in attention_resolutions for r in resolutions]
    if head_dim < 1:
      raise ValueError(f'head_dim={head_dim}: the width of an attention head must be >= 1.')
    for res, ch, attn in zip(resolutions, channels, attention):
      if attn and ch < head_dim:
        narrowest = min(c for c, a in zip(channels, attention) if a)
        raise ValueError(
            f'head_dim={head_dim} exceeds the {ch} channels of the attention layer at '
            f'resolution {res}, which would get {ch} // {head_dim} = 0 heads. Set head_dim to at '
            f'most {narrowest} (the narrowest attention layer), or drop resolution {res} from '
            'attention_resolutions.')
    if out_kernel_size < 1:
      raise ValueError(f'out_kernel_size={out_kernel_size}: use 3, or 1 for softmax logits.')

    self.base_channels = base_channels
    self.num_stages = num_stages
    self.num_res_blocks = num_res_blocks
    self.num_classes = num_classes
    self.dtype = dtype
    emb_dim = 4 * base_channels

    # Noise (and class) embedding.
    self.emb_dense0 = nnx.Linear(base_channels, emb_dim, dtype=dtype, kernel_init=_default_init,
                                 rngs=rngs)
    self.emb_dense1 = nnx.Linear(emb_dim, emb_dim, dtype=dtype, kernel_init=_default_init,
                                 rngs=rngs)
    self.label_emb = (nnx.Embed(num_classes + 1, emb_dim, dtype=dtype, rngs=rngs)
                      if num_classes > 0 else None)

    self.conv_in = _conv(in_channels, channels[0], 3, dtype, rngs)
    self.norm_in = _group_norm(channels[0], dtype, rngs)

    def block(cin, cout, stage):
      cross = cross_attention(cout) if cross_attention and attention[stage] else None
      return UNetBlock(cin, cout, emb_dim, dropout, attention[stage], head_dim, dtype, rngs, cross)

    # Down path; skip_channels tracks what each kept skip connection carries.
    skip_channels = [channels[0]]
    down, downsample = [], []
    ch = channels[0]
    for s in range(num_stages):
      for _ in range(num_res_blocks):
        down.append(block(ch, channels[s], s))
        ch = channels[s]
        skip_channels.append(ch)
      if s != num_stages - 1:
        downsample.append(_conv(ch, ch, 3, dtype, rngs, strides=2))
        skip_channels.append(ch)
    self.down = nnx.List(down)
    self.downsample = nnx.List(downsample)

    # Up path: num_res_blocks + 1 blocks per stage, each concatenating one skip connection.
    up, upsample = [], []
    for s in reversed(range(num_stages)):
      for _ in range(num_res_blocks + 1):
        up.append(block(ch + skip_channels.pop(), channels[s], s))
        ch = channels[s]
      if s != 0:
        upsample.append(_conv(ch, ch, 3, dtype, rngs))
    assert not skip_channels
    self.up = nnx.List(up)
    self.upsample = nnx.List(upsample)

    self.norm_out = _group_norm(ch, dtype, rngs)
    self.conv_out = _conv(ch, out_channels, out_kernel_size, dtype, rngs, kernel_init=_zero_init)

  def embed(self, gamma: jax.Array, labels: jax.Array | None, batch: int,
            offset: jax.Array | None = None) -> jax.Array:
    """gamma: [b] or scalar; labels: [b] int or None; offset: [b, 4 * base] added with the
    label embedding, or None. Returns the SiLU'd embedding [b, 4 * base]."""
    gamma = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), (batch,))
    emb = sinusoidal_embedding(gamma * _NOISE_SCALE, self.base_channels)
    emb = self.emb_dense1(nnx.silu(self.emb_dense0(emb)))
    if self.label_emb is not None:
      if labels is None:
        labels = jnp.full((batch,), self.num_classes, jnp.int32)
      emb = emb + self.label_emb(labels)
    if offset is not None:
      emb = emb + offset.astype(emb.dtype)
    return nnx.silu(emb)

  def encode_condition(self, labels: jax.Array | None) -> jax.Array | None:
    """The denoiser protocol's condition encoding (methods/bit_diffusion.py): labels need none,
    they are embedded with the noise level at every call."""
    return labels

  def denoise(self, x: jax.Array, gamma: jax.Array, labels: jax.Array | None, *,
              dropout_rng: jax.Array | None = None) -> jax.Array:
    """The denoiser protocol's per-step call: the same as calling the U-Net."""
    return self(x, gamma, labels, dropout_rng=dropout_rng)

  def __call__(self, x: jax.Array, gamma: jax.Array, labels: jax.Array | None = None, *,
               dropout_rng: jax.Array | None = None, context=None,
               embedding_offset: jax.Array | None = None) -> jax.Array:
    """Denoises.

    Args:
      x: [b, h, w, in_channels] float.
      gamma: [b] (or scalar) noise level in [0, 1], 1 = clean.
      labels: [b] int in [0, num_classes]; num_classes (or None) is the null label. Only when
        num_classes > 0.
      dropout_rng: a PRNG key; dropout is active only when it is given.
      context: what the `cross_attention` layers read (DisCo-Diff: latent tokens [b, m, D]).
      embedding_offset: [b, 4 * base_channels] added to the noise embedding, or None.

    Returns:
      [b, h, w, out_channels] float32.
    """
    if labels is not None and self.label_emb is None:
      raise ValueError('labels were given but the UNet was built with num_classes=0; build it '
                       'with num_classes > 0 or pass labels=None.')
    batch = x.shape[0]
    emb = self.embed(gamma, labels, batch, embedding_offset)

    num_down = len(self.down)
    key = lambda i: None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)

    h = self.norm_in(self.conv_in(x.astype(self.dtype)))
    skips = [h]
    for s in range(self.num_stages):
      for j in range(self.num_res_blocks):
        i = s * self.num_res_blocks + j
        h, pre_attention = self.down[i](h, emb, key(i), context)
        skips.append(pre_attention)  # As the authors' code: the skip is taken before attention.
      if s != self.num_stages - 1:
        h = self.downsample[s](h)
        skips.append(h)

    for s in reversed(range(self.num_stages)):
      for j in range(self.num_res_blocks + 1):
        i = (self.num_stages - 1 - s) * (self.num_res_blocks + 1) + j
        h, _ = self.up[i](jnp.concatenate([h, skips.pop()], axis=-1), emb, key(num_down + i),
                         context)
      if s != 0:
        h = self.upsample[self.num_stages - 1 - s](_upsample2x(h))

    h = self.conv_out(nnx.silu(self.norm_out(h)))
    return h.astype(jnp.float32)
