"""Analog bits: integers written as real-valued bits in {-b, +b}, and read back by thresholding.

Paper Sec. 2 ("Analog bits"): an integer in [0, 2**n) becomes n bits, each mapped to -b or +b.
Bit order is least-significant first, as in the authors' `int2bits`. The encodings of Table 1:

- 'binary':   plain binary code (the paper's "uint8").
- 'gray':     reflected Gray code, so neighbouring values differ in one bit.
- 'permuted': a fixed random permutation of the values before binary coding ("uint8 (rand)"); for
              8 bits with seed 42 it is exactly the paper's `np.random.seed(42); np.random.shuffle`.
- 'onehot':   2**n channels per value, +b at the value's index and -b elsewhere.

Several values in the last axis (e.g. RGB) are laid out value-major: [R bits, G bits, B bits].
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

ENCODINGS = ('binary', 'gray', 'permuted', 'onehot')
MAX_BITS = 16


def value_permutation(num_bits: int, seed: int = 42) -> np.ndarray:
  """The permutation p of 'permuted': value v is coded as binary(p[v]). Shape [2**num_bits]."""
  permutation = np.arange(2**num_bits)
  np.random.RandomState(seed).shuffle(permutation)  # Same stream as np.random.seed(seed).
  return permutation


@dataclasses.dataclass(frozen=True)
class BitCodec:
  """Encodes integers in [0, 2**num_bits) as analog bits and decodes them back.

  Attributes:
    num_bits: bits per value, 1..16.
    encoding: one of ENCODINGS.
    scale: b, the magnitude of an analog bit.
    permutation_seed: numpy seed of the value permutation for 'permuted'.
  """
  num_bits: int
  encoding: str = 'binary'
  scale: float = 1.0
  permutation_seed: int = 42

  def __post_init__(self):
    if not 1 <= self.num_bits <= MAX_BITS:
      raise ValueError(f'num_bits must be in 1..{MAX_BITS}, got {self.num_bits}.')
    if self.encoding not in ENCODINGS:
      raise ValueError(f'Unknown bit encoding {self.encoding!r}; choose one of {ENCODINGS}.')
    if self.encoding == 'onehot' and self.num_bits > 10:
      raise ValueError(f"'onehot' with num_bits={self.num_bits} needs {2**self.num_bits} channels "
                       'per value; use a bit encoding or num_bits <= 10.')
    if not self.scale > 0:
      raise ValueError(f'The bit scale b must be positive, got {self.scale}.')

  @property
  def num_values(self) -> int:
    return 2**self.num_bits

  @property
  def channels_per_value(self) -> int:
    """Analog channels for one integer: num_bits, or 2**num_bits for 'onehot'."""
    return self.num_values if self.encoding == 'onehot' else self.num_bits

  @functools.cached_property
  def _codes(self) -> np.ndarray:
    """The binary number written for each value (bit encodings), int64 [2**num_bits]."""
    values = np.arange(self.num_values)
    if self.encoding == 'gray':
      return values ^ (values >> 1)
    if self.encoding == 'permuted':
      return value_permutation(self.num_bits, self.permutation_seed)
    return values

  @functools.cached_property
  def _values_of_codes(self) -> np.ndarray:
    """The inverse of `_codes`: binary number read off the bits -> value, int32 [2**num_bits]."""
    values = np.empty(self.num_values, dtype=np.int32)
    values[self._codes] = np.arange(self.num_values)
    return values

  @functools.cached_property
  def code_table(self) -> np.ndarray:
    """The analog code of every value, float32 [2**num_bits, channels_per_value]."""
    if self.encoding == 'onehot':
      bits = np.eye(self.num_values, dtype=np.float32)
    else:
      bits = (self._codes[:, None] >> np.arange(self.num_bits)) & 1
    return ((bits * 2.0 - 1.0) * self.scale).astype(np.float32)

  def check_range(self, values: np.ndarray, what: str = 'data') -> None:
    """Raises ValueError unless every value is an integer in [0, 2**num_bits)."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
      raise ValueError(f'{what} must hold integers, got dtype {values.dtype}.')
    if values.size and (values.min() < 0 or values.max() >= self.num_values):
      raise ValueError(
          f'{what} has values in [{values.min()}, {values.max()}], which do not fit '
          f'num_bits={self.num_bits} (range [0, {self.num_values - 1}]); raise num_bits '
          f'to at least {max(1, int(values.max()).bit_length())} or rescale the data.')

  def encode(self, values: jnp.ndarray) -> jnp.ndarray:
    """Integers [..., C] -> analog bits float32 [..., C * channels_per_value].

    Values are assumed in range (see `check_range`, which data loaders call on real data).
    """
    analog = jnp.asarray(self.code_table)[values]  # [..., C, channels_per_value]
    return analog.reshape(*values.shape[:-1], -1)

  def decode(self, analog: jnp.ndarray) -> jnp.ndarray:
    """Analog bits [..., C * channels_per_value] -> int32 [..., C]; thresholds at 0 (argmax)."""
    analog = analog.reshape(*analog.shape[:-1], -1, self.channels_per_value)
    if self.encoding == 'onehot':
      return jnp.argmax(analog, axis=-1).astype(jnp.int32)
    weights = jnp.asarray(1 << np.arange(self.num_bits), dtype=jnp.int32)
    codes = jnp.sum((analog > 0).astype(jnp.int32) * weights, axis=-1)
    if self.encoding == 'binary':
      return codes
    return jnp.asarray(self._values_of_codes)[codes]

  def expected_bits(self, logits: jnp.ndarray) -> jnp.ndarray:
    """Softmax-factorised output: logits [..., C * 2**n] -> expected analog bits [..., C * k].

    Paper Appendix ("uint8 (rand)"): per value, a softmax over its 2**n codes weights their analog
    bits; the result is trained with the usual L2 loss against the true bits.
    """
    logits = logits.reshape(*logits.shape[:-1], -1, self.num_values)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    analog = probs @ jnp.asarray(self.code_table)  # [..., C, channels_per_value]
    return analog.reshape(*analog.shape[:-2], -1)

