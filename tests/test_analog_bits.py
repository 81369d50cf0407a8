"""Analog bits: round trips for every encoding and width, the paper's conventions, range errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from bit_diffusion import analog_bits


@pytest.mark.parametrize('encoding', analog_bits.ENCODINGS)
@pytest.mark.parametrize('num_bits', range(1, 17))
def test_round_trip_every_value(encoding, num_bits):
  if encoding == 'onehot' and num_bits > 10:
    with pytest.raises(ValueError, match='onehot'):
      analog_bits.BitCodec(num_bits, encoding)
    return
  codec = analog_bits.BitCodec(num_bits, encoding, scale=0.7)
  values = np.arange(2**num_bits, dtype=np.int32).reshape(-1, 1)  # [V, 1]: every value once.
  analog = codec.encode(jnp.asarray(values))
  assert analog.shape == (2**num_bits, codec.channels_per_value)
  np.testing.assert_allclose(np.abs(analog), 0.7)  # Every analog bit is -b or +b.
  np.testing.assert_array_equal(codec.decode(analog), values)
  # Decoding tolerates noise that keeps the sign (the sampler's thresholding at 0).
  noisy = analog * 0.01 + np.sign(analog) * 1e-3
  np.testing.assert_array_equal(codec.decode(noisy), values)
  # Distinct values get distinct codes.
  assert len({tuple(row) for row in np.asarray(analog)}) == 2**num_bits


def test_rgb_layout_is_value_major_lsb_first():
  codec = analog_bits.BitCodec(8, 'binary')
  pixel = jnp.array([[[[1, 2, 128]]]], jnp.int32)  # [1, 1, 1, 3]
  analog = np.asarray(codec.encode(pixel))[0, 0, 0]
  assert analog.shape == (24,)
  expected = np.full(24, -1.0)
  expected[0] = 1  # R = 1: bit 0.
  expected[8 + 1] = 1  # G = 2: bit 1.
  expected[16 + 7] = 1  # B = 128: bit 7.
  np.testing.assert_array_equal(analog, expected)


def test_gray_code_neighbours_differ_in_one_bit():
  codec = analog_bits.BitCodec(8, 'gray')
  table = codec.code_table > 0
  assert np.all(np.sum(table[1:] != table[:-1], axis=1) == 1)


def test_permutation_is_the_papers_seed_42_shuffle():
  np.random.seed(42)
  paper = np.arange(256)
  np.random.shuffle(paper)
  np.testing.assert_array_equal(analog_bits.value_permutation(8, 42), paper)
  codec = analog_bits.BitCodec(8, 'permuted')
  value = 17
  code_bits = (codec.code_table[value] > 0).astype(int)
  assert int(np.sum(code_bits << np.arange(8))) == paper[value]


def test_onehot_is_plus_b_at_the_value():
  codec = analog_bits.BitCodec(3, 'onehot', scale=2.0)
  analog = np.asarray(codec.encode(jnp.array([[5]])))[0]
  np.testing.assert_array_equal(analog, [-2, -2, -2, -2, -2, 2, -2, -2])


def test_expected_bits_of_a_confident_softmax_is_the_code():
  codec = analog_bits.BitCodec(4, 'permuted')
  values = jnp.array([[3, 9]])  # [1, 2]
  logits = jax_one_hot_logits(values, 16)
  np.testing.assert_allclose(codec.expected_bits(logits), codec.encode(values), atol=1e-5)
  uniform = codec.expected_bits(jnp.zeros((1, 32)))
  np.testing.assert_allclose(uniform, 0.0, atol=1e-6)  # Each bit is 1 for half of the codes.


def jax_one_hot_logits(values, num_values):
  return (jnp.eye(num_values)[values] * 50.0).reshape(values.shape[0], -1)


def test_range_errors_name_the_problem():
  codec = analog_bits.BitCodec(5)
  codec.check_range(np.array([0, 31]))
  with pytest.raises(ValueError, match=r'\[0, 32\].*num_bits=5.*at least 6'):
    codec.check_range(np.array([0, 32]), 'digits')
  with pytest.raises(ValueError, match=r'\[-1, 3\]'):
    codec.check_range(np.array([-1, 3]))
  with pytest.raises(ValueError, match='integers'):
    codec.check_range(np.array([0.5]))
  for bad in (0, 17):
    with pytest.raises(ValueError, match='num_bits'):
      analog_bits.BitCodec(bad)
  with pytest.raises(ValueError, match='encoding'):
    analog_bits.BitCodec(8, 'grey')
  with pytest.raises(ValueError, match='scale'):
    analog_bits.BitCodec(8, scale=0.0)
