"""DisCo-Diff's toy data (Xu et al. 2024, App.): 8 Gaussians, as integers on a fixed-point grid.

The paper's points are continuous: a mixture of `num_modes` Gaussians (sigma 0.2) whose means lie
on a circle of radius 3. Bit Diffusion generates integers, so each coordinate p is written on a
grid of 2**num_bits cells over [low, high):

    v = clip(floor((p - low) / cell), 0, 2**num_bits - 1),   cell = (high - low) / 2**num_bits,

and decoded to the centre of its cell, low + (v + 1/2) cell. Rounding at unit resolution would
merge a Gaussian of sigma 0.2 into two or three values; the default grid, 8 bits over [-4, 4),
has cells of 1/32 (sigma / 6.4): the rounding adds a uniform error of standard deviation
cell / sqrt(12) = 0.009 per coordinate, and a point beyond 4 (5 sigma past the outermost mean)
is clipped to the edge cell. Metrics (W2) are computed on decoded points, in the original units.

Training draws fresh points every step (the paper fixed 1,000 points per mode): batch `step` is a
pure function of (seed, step), so a resumed run sees the batches an uninterrupted run would have.
"""

import dataclasses

import numpy as np

MIXTURES = ('eight_gaussians',)


@dataclasses.dataclass(frozen=True)
class Grid:
  """The fixed-point grid of each coordinate: 2**num_bits cells over [low, high)."""
  low: float
  high: float
  num_bits: int

  def __post_init__(self):
    if not self.high > self.low:
      raise ValueError(f'data.high={self.high} must exceed data.low={self.low}.')
    if not 1 <= self.num_bits <= 16:
      raise ValueError(f'data.num_bits={self.num_bits} must lie in 1..16.')

  @property
  def cell(self) -> float:
    return (self.high - self.low) / 2**self.num_bits

  def quantise(self, points: np.ndarray) -> np.ndarray:
    """Points float [..., D] -> cell indices int32 [..., D] in [0, 2**num_bits)."""
    values = np.floor((np.asarray(points, np.float64) - self.low) / self.cell)
    return np.clip(values, 0, 2**self.num_bits - 1).astype(np.int32)

  def decode(self, values: np.ndarray) -> np.ndarray:
    """Cell indices int [..., D] -> the cells' centres float64 [..., D]."""
    return self.low + (np.asarray(values, np.float64) + 0.5) * self.cell


def grid_from_config(data_config) -> Grid:
  return Grid(low=data_config.low, high=data_config.high, num_bits=data_config.num_bits)


def mode_means(num_modes: int, radius: float) -> np.ndarray:
  """The means float64 [num_modes, 2], evenly spaced on a circle of `radius`, the first at
  angle 0."""
  angles = 2 * np.pi * np.arange(num_modes) / num_modes
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def draw_points(rng: np.random.Generator, num: int, data_config) -> tuple[np.ndarray, np.ndarray]:
  """(points float64 [num, 2], modes int32 [num]) of the mixture `data_config.name`: each point
  from a mode chosen uniformly, mean + sigma * N(0, I)."""
  if data_config.name not in MIXTURES:
    raise ValueError(f'Unknown points data.name {data_config.name!r}; choose one of {MIXTURES}.')
  modes = rng.integers(0, data_config.num_modes, num).astype(np.int32)
  means = mode_means(data_config.num_modes, data_config.radius)
  return means[modes] + data_config.sigma * rng.standard_normal((num, 2)), modes


def draw_values(seed_words: list[int], num: int, data_config) -> tuple[np.ndarray, np.ndarray]:
  """(grid values int32 [num, 2], modes int32 [num]) from numpy's generator of `seed_words`."""
  points, modes = draw_points(np.random.default_rng(seed_words), num, data_config)
  return grid_from_config(data_config).quantise(points), modes


# Separate numpy streams of a seed: training batches ([seed, 0, step]) and held-out draws for
# metrics ([seed, 1, index]).
TRAIN_STREAM, HELD_OUT_STREAM = 0, 1


class PointsIterator:
  """Training batches {'points': int32 [b, 2]}: global batch `step` is drawn
  from the stream [seed, 0, step]; process p of P keeps the p-th slice of b = B / P rows."""

  def __init__(self, data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
               process_index: int = 0, process_count: int = 1):
    if global_batch_size <= 0 or global_batch_size % process_count:
      raise ValueError(f'The global batch size {global_batch_size} must be a positive multiple '
                       f'of the number of processes ({process_count}).')
    if seed < 0 or start_step < 0:
      raise ValueError(f'seed ({seed}) and start_step ({start_step}) must be >= 0.')
    grid_from_config(data_config)  # Bad grid fields fail here, before anything compiles.
    self.data_config, self.seed, self.step = data_config, seed, start_step
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.offset = process_index * self.local_batch_size

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    values, _ = draw_values([self.seed, TRAIN_STREAM, step], self.global_batch_size,
                            self.data_config)
    return {'points': values[self.offset:self.offset + self.local_batch_size]}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch_at(self.step)
    self.step += 1
    return batch

  def close(self) -> None:
    """Nothing to stop (no background thread: a batch costs microseconds)."""


def held_out(seed: int, index: int, num: int, data_config) -> tuple[np.ndarray, np.ndarray]:
  """(values int32 [num, 2], modes int32 [num]): draw `index` of the held-out stream, never
  seen in training."""
  return draw_values([seed, HELD_OUT_STREAM, index], num, data_config)
