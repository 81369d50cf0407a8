"""Our U-Net (bit_diffusion/unet.py) transcribed to PyTorch, for the benchmarks only.

Runs in .venv-peer (torch, no jax). The same network, layer for layer, with the same module
names as the Flax one, so that `benchmarks/same_network.py` can export our parameters under
these names and `load_state_dict(strict=True)` takes them (`same_network_torch.py --check`
compares the outputs). Layout is NCHW; the differences from the Flax code that the layouts need:

- conv kernels are [out, in, kh, kw] (Flax: [kh, kw, in, out]); linear weights [out, in];
- Flax's 'SAME' padding of the stride-2 3x3 downsampling conv on an even size pads 0 before and
  1 after (PyTorch's padding=1 would pad 1 on both sides): an explicit F.pad(0, 1, 0, 1);
- GroupNorm's `scale` is PyTorch's `weight`.

Unconditional only (no label embedding): what the benchmarks run.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NOISE_SCALE = 1000.0  # gamma in [0, 1] is embedded as gamma * 1000, as ours.
INV_SQRT2 = 1.0 / math.sqrt(2.0)


def num_groups(channels: int) -> int:
  """GroupNorm group count: 32, or fewer for narrow layers (as unet.num_groups)."""
  limit = max(1, min(32, channels // 4))
  return max(g for g in range(1, limit + 1) if channels % g == 0)


def sinusoidal_embedding(x: torch.Tensor, dim: int) -> torch.Tensor:
  """x: [b] -> [b, dim]: sin of the frequencies 10000**(-2k / dim), then cos (as ours)."""
  i = torch.arange(dim, dtype=torch.float32, device=x.device)
  rates = 10000.0 ** (-2.0 * torch.div(i, 2, rounding_mode='floor') / dim)
  angles = x.float()[:, None] * rates[None, :]
  return torch.cat([torch.sin(angles[:, 0::2]), torch.cos(angles[:, 1::2])], dim=-1)


def _group_norm(channels: int) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups(channels), channels, eps=1e-5)


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
  return nn.Conv2d(in_ch, out_ch, 3, padding=1)


class Downsample(nn.Conv2d):
  """A stride-2 3x3 conv with Flax's 'SAME' padding: 0 rows/columns before, 1 after."""

  def __init__(self, channels: int):
    super().__init__(channels, channels, 3, stride=2, padding=0)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: [b, c, h, w] (h, w even) -> [b, c, h / 2, w / 2]."""
    return super().forward(F.pad(x, (0, 1, 0, 1)))


class ResBlock(nn.Module):
  """GroupNorm, SiLU, conv3x3, FiLM from the embedding, SiLU, dropout, conv3x3; scaled residual."""

  def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float):
    super().__init__()
    self.norm0 = _group_norm(in_channels)
    self.conv0 = _conv3x3(in_channels, out_channels)
    self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
    self.norm1 = _group_norm(out_channels)
    self.dropout = nn.Dropout(dropout)
    self.conv1 = _conv3x3(out_channels, out_channels)
    self.shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                     if in_channels != out_channels else None)

  def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """x: [b, in, h, w]; emb: [b, emb_dim] (after SiLU). Returns [b, out, h, w]."""
    h = self.conv0(F.silu(self.norm0(x)))
    scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)  # FiLM: [b, out, 1, 1].
    h = F.silu(self.norm1(h) * (1.0 + scale) + shift)
    h = self.conv1(self.dropout(h))
    skip = x if self.shortcut is None else self.shortcut(x)
    return (skip + h) * INV_SQRT2


class SelfAttention(nn.Module):
  """GroupNorm, channels // head_dim heads over the h * w positions, projection; scaled residual."""

  def __init__(self, channels: int, head_dim: int):
    super().__init__()
    self.num_heads = channels // head_dim
    self.head_dim = head_dim
    width = self.num_heads * head_dim
    self.norm = _group_norm(channels)
    self.qkv = nn.Linear(channels, 3 * width)
    self.proj = nn.Linear(width, channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: [b, c, h, w] -> [b, c, h, w]."""
    b, c, h, w = x.shape
    n, d = self.num_heads, self.head_dim
    tokens = self.norm(x).reshape(b, c, h * w).transpose(1, 2)  # [b, hw, c]
    qkv = self.qkv(tokens).reshape(b, h * w, 3, n, d).permute(2, 0, 3, 1, 4)  # [3, b, n, hw, d]
    # Softmax(q k^T / sqrt(head_dim)) v per head: the default scale, as ours.
    y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [b, n, hw, d]
    y = self.proj(y.transpose(1, 2).reshape(b, h * w, n * d))  # [b, hw, c]
    return (x + y.transpose(1, 2).reshape(b, c, h, w)) * INV_SQRT2


class UNetBlock(nn.Module):
  """A residual block, optionally followed by self-attention."""

  def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float,
               attention: bool, head_dim: int):
    super().__init__()
    self.res = ResBlock(in_channels, out_channels, emb_dim, dropout)
    self.attn = SelfAttention(out_channels, head_dim) if attention else None

  def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [b, c_in, h, w] -> (output [b, c_out, h, w], residual-block output before attention)."""
    h = self.res(x, emb)
    return (h if self.attn is None else self.attn(h)), h


class UNet(nn.Module):
  """Our U-Net: x [b, in_channels, h, w], gamma [b] -> [b, out_channels, h, w] float32.

  The arguments are those of `bit_diffusion.unet.UNet` (unconditional: no num_classes).
  """

  def __init__(self, *, in_channels: int, out_channels: int, image_size: int,
               base_channels: int, channel_multipliers: Sequence[int], num_res_blocks: int,
               attention_resolutions: Sequence[int], head_dim: int = 64, dropout: float = 0.0,
               out_kernel_size: int = 3):
    super().__init__()
    num_stages = len(channel_multipliers)
    resolutions = [image_size // 2**s for s in range(num_stages)]
    channels = [base_channels * m for m in channel_multipliers]
    attention = [r in attention_resolutions for r in resolutions]
    self.base_channels = base_channels
    self.num_stages = num_stages
    self.num_res_blocks = num_res_blocks
    emb_dim = 4 * base_channels

    self.emb_dense0 = nn.Linear(base_channels, emb_dim)
    self.emb_dense1 = nn.Linear(emb_dim, emb_dim)
    self.conv_in = _conv3x3(in_channels, channels[0])
    self.norm_in = _group_norm(channels[0])

    def block(cin, cout, stage):
      return UNetBlock(cin, cout, emb_dim, dropout, attention[stage], head_dim)

    skip_channels = [channels[0]]
    down, downsample = [], []
    ch = channels[0]
    for s in range(num_stages):
      for _ in range(num_res_blocks):
        down.append(block(ch, channels[s], s))
        ch = channels[s]
        skip_channels.append(ch)
      if s != num_stages - 1:
        downsample.append(Downsample(ch))
        skip_channels.append(ch)
    self.down = nn.ModuleList(down)
    self.downsample = nn.ModuleList(downsample)

    up, upsample = [], []
    for s in reversed(range(num_stages)):
      for _ in range(num_res_blocks + 1):
        up.append(block(ch + skip_channels.pop(), channels[s], s))
        ch = channels[s]
      if s != 0:
        upsample.append(_conv3x3(ch, ch))
    self.up = nn.ModuleList(up)
    self.upsample = nn.ModuleList(upsample)

    self.norm_out = _group_norm(ch)
    self.conv_out = nn.Conv2d(ch, out_channels, out_kernel_size, padding=out_kernel_size // 2)

  def forward(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """x: [b, in_channels, h, w]; gamma: [b] noise level in [0, 1]. Returns [b, out, h, w]."""
    emb = sinusoidal_embedding(gamma * NOISE_SCALE, self.base_channels)
    emb = F.silu(self.emb_dense1(F.silu(self.emb_dense0(emb))))

    h = self.norm_in(self.conv_in(x))
    skips = [h]
    for s in range(self.num_stages):
      for j in range(self.num_res_blocks):
        h, pre_attention = self.down[s * self.num_res_blocks + j](h, emb)
        skips.append(pre_attention)  # As ours: the skip is taken before attention.
      if s != self.num_stages - 1:
        h = self.downsample[s](h)
        skips.append(h)

    for s in reversed(range(self.num_stages)):
      for j in range(self.num_res_blocks + 1):
        i = (self.num_stages - 1 - s) * (self.num_res_blocks + 1) + j
        h, _ = self.up[i](torch.cat([h, skips.pop()], dim=1), emb)
      if s != 0:
        h = F.interpolate(h, scale_factor=2, mode='nearest')
        h = self.upsample[self.num_stages - 1 - s](h)

    return self.conv_out(F.silu(self.norm_out(h)))


def count_params(module: nn.Module) -> int:
  """Number of parameter scalars."""
  return sum(p.numel() for p in module.parameters())
