"""Infilling: the replacement sampler on a distribution with a known answer, the autoregressive
baseline's left-context decoding, and text infill files."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bit_diffusion import engine
from bit_diffusion import methods
from bit_diffusion import samplers
from bit_diffusion import schedules
from bit_diffusion.methods import autoregressive
from bit_diffusion.text import corpus as corpus_lib
from bit_diffusion.text import infill
from configs import text_ar
from configs import tiny

GAMMA = schedules.get_gamma_fn('cosine')


def twin_bits_x0(x, gamma, self_cond):
  """The exact x0 = E[x0 | x_t] of data (b, b) with b = -1 or +1 equally likely: the posterior
  of b given x_t = sqrt(g) b + sqrt(1 - g) z in both channels is proportional to
  exp(sqrt(g) b (x_1 + x_2) / (1 - g)), so E[x0] = tanh(sqrt(g) (x_1 + x_2) / (1 - g))."""
  del self_cond
  g = gamma[:, None]
  value = jnp.tanh(jnp.sqrt(g) * jnp.sum(x, axis=-1, keepdims=True) / (1 - g))
  return jnp.broadcast_to(value, x.shape)


def test_replacement_fills_the_unknown_twin_bit():
  batch = 400
  first = jnp.where(jax.random.bernoulli(jax.random.key(0), 0.5, (batch,)), 1.0, -1.0)
  known_bits = jnp.stack([first, jnp.zeros_like(first)], axis=-1)  # [B, 2]
  mask = jnp.broadcast_to(jnp.array([True, False]), (batch, 2))
  run = lambda known: samplers.sample(twin_bits_x0, (batch, 2), jax.random.key(1),
                                      gamma_fn=GAMMA, steps=50, known=known)[0]
  x0 = run((known_bits, mask))
  np.testing.assert_array_equal(x0[:, 0], first)  # The known bit is kept exactly.
  # The second bit should equal the first: the data have no other pairs. Replacement gets it
  # nearly always, not always (seen: 98.5%): at the noisiest steps the known bit is mostly noise
  # and a few samples commit to the other sign before it is clear (RePaint's resampling targets
  # this).
  assert float(jnp.mean(jnp.sign(x0[:, 1]) == first)) > 0.95
  # Without the known bit the pair is drawn at random: half of them disagree with `first`.
  unconditional = run(None)
  agreement = float(jnp.mean(jnp.sign(unconditional[:, 1]) == first))
  assert 0.4 < agreement < 0.6, agreement  # 400 draws: 5 standard deviations is 0.125.
  # Nothing known is the plain sampler, draw for draw.
  np.testing.assert_array_equal(run((known_bits, jnp.zeros_like(mask))), unconditional)


def twin_positions_x0(x, gamma, self_cond):
  """`twin_bits_x0` for the pair as a sequence [B, 2, 1] with a noise level per position,
  gamma [B, 2] (or [B]): E[x0] = tanh(sum_i sqrt(g_i) x_i / (1 - g_i))."""
  del self_cond
  g = jnp.broadcast_to(gamma[:, None] if gamma.ndim == 1 else gamma, x.shape[:2])[..., None]
  value = jnp.tanh(jnp.sum(jnp.sqrt(g) * x / (1 - g), axis=1, keepdims=True))
  return jnp.broadcast_to(value, x.shape)


def test_clean_infill_gives_the_known_position_exactly_and_fills_its_twin_always():
  """With the known position clean, at the level of t = 0, the exact denoiser is certain of the
  pair from the first step: every fill is right (replacement: about 98.5%, test above)."""
  batch = 400
  first = jnp.where(jax.random.bernoulli(jax.random.key(0), 0.5, (batch,)), 1.0, -1.0)
  known_bits = jnp.stack([first, jnp.zeros_like(first)], axis=-1)[..., None]  # [B, 2, 1]
  mask = jnp.broadcast_to(jnp.array([True, False])[:, None], (batch, 2, 1))
  seen_levels = []

  def recording_x0(x, gamma, self_cond):
    seen_levels.append(gamma)
    return twin_positions_x0(x, gamma, self_cond)

  x0, _ = samplers.sample(recording_x0, (batch, 2, 1), jax.random.key(1), gamma_fn=GAMMA,
                          steps=50, known=(known_bits, mask), infill='clean')
  np.testing.assert_array_equal(x0[:, 0, 0], first)
  np.testing.assert_array_equal(jnp.sign(x0[:, 1, 0]), first)
  levels = seen_levels[0]  # Traced once by the loop: the levels of one step.
  assert levels.shape == (batch, 2)
  with pytest.raises(ValueError, match='sequences'):
    samplers.sample(twin_bits_x0, (batch, 2), jax.random.key(1), gamma_fn=GAMMA, steps=5,
                    known=(known_bits[..., 0], mask[..., 0]), infill='clean')
  with pytest.raises(ValueError, match='Unknown infill'):
    samplers.sample(twin_bits_x0, (batch, 2), jax.random.key(1), gamma_fn=GAMMA, steps=5,
                    infill='renoise')


def test_clean_infill_needs_training_with_position_noise():
  from configs import text as text_config
  config = tiny.tiny_text(text_config, **{'diffusion.position_noise_rate': 0.0})
  method = methods.create(config)
  assert method.infill_methods() == ('replace',)
  with pytest.raises(ValueError, match='position_noise_rate > 0'):
    engine.check_config(config, method, 1, 1)
  config = tiny.tiny_text(text_config, **{'sampling.infill_method': 'replace'})
  assert methods.create(config).infill_methods() == ('replace', 'clean')


def test_autoregressive_infill_decodes_from_the_left_context_only():
  config = tiny.tiny_text(text_ar)
  method = methods.create(config)
  graphdef, params = nnx.split(method.create_network(jax.random.key(3)), nnx.Param)
  params['logits_out']['kernel'].value = params['logits_out']['kernel'].value * 30.0
  known = jax.random.randint(jax.random.key(4), (4, 16), 0, 27)
  mask = jnp.ones((4, 16), bool).at[:, 5:9].set(False)  # Positions 5-8 unknown.
  assert config.sampling.temperature == 1.0  # Infilling decodes greedily all the same.
  fn = method.make_sample_fn(graphdef, infill=True)
  filled = fn(params, engine.seed_key(0, 'infill'), (jnp.zeros((4,), jnp.int32), known, mask))
  np.testing.assert_array_equal(filled[:, :5], known[:, :5])
  np.testing.assert_array_equal(filled[:, 9:], known[:, 9:])
  # Each unknown position is the argmax given the (filled) tokens to its left: one full causal
  # pass over the result reproduces them, whatever follows position 8.
  model = nnx.merge(graphdef, params)
  logits = model.logits(autoregressive.shift_right(filled, model.start_id), None)
  np.testing.assert_array_equal(filled[:, 5:9], jnp.argmax(logits[:, 5:9], -1))


def test_infill_text_file_is_read_with_one_token_per_mask_char(tmp_path):
  vocabulary = corpus_lib.CharacterVocabulary('text8')
  path = tmp_path / 'known.txt'
  path.write_text('The c_t s_t!\n____ quick f\n')
  tokens, mask = infill.read_known(str(path), vocabulary, 12)
  # 'The c' + _ + 't s' + _ + 't' normalised: 'the c', 't s', 't ' (the '!' becomes a space).
  assert vocabulary.decode(np.where(mask[0], tokens[0], 0)) == 'the c t s t '
  np.testing.assert_array_equal(np.flatnonzero(~mask[0]), [5, 9])
  np.testing.assert_array_equal(np.flatnonzero(~mask[1]), [0, 1, 2, 3])
  with pytest.raises(ValueError, match='line 1 comes to 12 tokens'):
    infill.read_known(str(path), vocabulary, 13)
  np.savez(tmp_path / 'ids.npz', tokens=np.full((2, 13), 30), mask=np.ones((2, 13), bool))
  with pytest.raises(ValueError, match=r"outside the model's vocabulary \[0, 27\)"):
    infill.read_known(str(tmp_path / 'ids.npz'), vocabulary, 13)
  np.savez(tmp_path / 'shape.npz', tokens=np.zeros((2, 12)), mask=np.ones((2, 12), bool))
  with pytest.raises(ValueError, match='must both be'):
    infill.read_known(str(tmp_path / 'shape.npz'), vocabulary, 13)
  with pytest.raises(FileNotFoundError, match='not found'):
    infill.read_known(os.path.join(tmp_path, 'missing.txt'), vocabulary, 13)


def test_span_masks_and_accuracy():
  mask = infill.span_masks(50, 16, 4, seed=0)
  assert mask.shape == (50, 16) and ((~mask).sum(axis=1) == 4).all()
  starts = np.argmin(mask, axis=1)  # The first unknown position of each row.
  np.testing.assert_array_equal((~mask).nonzero()[1].reshape(50, 4),
                                starts[:, None] + np.arange(4))
  assert len(np.unique(starts)) > 5  # Spans at many places.
  original = np.arange(16)[None].repeat(2, 0)
  filled = original.copy()
  span = infill.span_masks(2, 16, 4, seed=1)
  filled[~span] = -1
  filled[0, np.flatnonzero(~span[0])[0]] = original[0, np.flatnonzero(~span[0])[0]]
  assert infill.span_accuracy(filled, original, span) == 1 / 8
