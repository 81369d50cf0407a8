"""Captions as tokens and bits: widths for any vocabulary, the EOS/PAD policy, robust decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_diffusion import analog_bits
from bit_diffusion import samplers
from bit_diffusion import schedules
from bit_diffusion.captioning import scenes
from bit_diffusion.captioning import tokens


@pytest.fixture(scope='module')
def tokenizer():
  captions = scenes.ShapesSource('train', 16).all_captions()
  return tokens.CaptionTokenizer(tokens.train_tokenizer(captions, 96, 'bpe'), max_length=20)


@pytest.mark.parametrize('vocab_size', [2, 3, 96, 128, 129, 1000, 32_000, 32_768, 65_536])
def test_ids_to_bits_and_back_for_any_vocab(vocab_size):
  num_bits = tokens.bits_for_vocab(vocab_size)
  assert 2 ** (num_bits - 1) < vocab_size <= 2 ** num_bits  # The fewest bits that fit.
  codec = analog_bits.BitCodec(num_bits)
  rng = np.random.default_rng(vocab_size)
  ids = rng.integers(0, vocab_size, (4, 64)).astype(np.int32)
  ids[0, :2] = [0, vocab_size - 1]
  bits = codec.encode(jnp.asarray(ids)[..., None])  # [B, L, 1] -> [B, L, k]
  assert bits.shape == (4, 64, num_bits)
  np.testing.assert_array_equal(codec.decode(bits)[..., 0], ids)


def test_paper_width_is_15_bits_for_32k():
  assert tokens.bits_for_vocab(32_000) == 15


def test_padding_and_eos_policy(tokenizer):
  ids = tokenizer.text_to_ids(['a red circle at the top left', 'red ' * 40, ''])
  assert ids.shape == (3, 20) and ids.dtype == np.int32
  for row in ids:  # Exactly one EOS, followed only by PAD.
    eos = np.flatnonzero(row == tokens.EOS_ID)
    assert len(eos) == 1 and np.all(row[eos[0] + 1:] == tokens.PAD_ID)
  assert ids[1, -1] == tokens.EOS_ID  # Cut to max_length - 1 pieces, then EOS.
  assert ids[2, 0] == tokens.EOS_ID  # The empty caption is just EOS.
  assert tokenizer.ids_to_text(ids)[0] == 'a red circle at the top left'
  assert tokenizer.ids_to_text(ids[1:])[0] == ' '.join(['red'] * 19)


def test_any_ids_decode_to_clean_text(tokenizer):
  """Ids a sampler may produce: beyond the vocabulary, control ids, PAD before EOS."""
  good = tokenizer.text_to_ids(['a blue square in the center'])[0]
  bad = good.copy()
  bad[1] = 127  # >= vocab_size (96): 7 bits can spell it; dropped.
  bad[2] = tokens.UNK_ID  # Dropped.
  assert tokenizer.ids_to_text(bad[None])[0] == tokenizer.processor.decode(
      [int(t) for t in good[:1]] + [int(t) for t in good[3:np.argmax(good == 1)]])
  stops = good.copy()
  stops[3] = tokens.PAD_ID  # A PAD ends the caption like EOS.
  assert tokenizer.ids_to_text(stops[None])[0] == tokenizer.processor.decode(
      [int(t) for t in good[:3]])
  noise = np.random.default_rng(0).integers(0, 2 ** tokenizer.num_bits, (50, 20))
  texts = tokenizer.ids_to_text(noise)
  assert len(texts) == 50 and all(isinstance(t, str) for t in texts)


def test_tokenizer_file_round_trip(tmp_path, tokenizer):
  path = str(tmp_path / 'tok.model')
  tokens.train_tokenizer(['a red circle', 'a blue square'] * 20, 20, 'bpe', model_path=path)
  loaded = tokens.CaptionTokenizer.from_file(path, max_length=16)
  assert loaded.ids_to_text(loaded.text_to_ids(['a red square']))[0] == 'a red square'
  with pytest.raises(FileNotFoundError, match='make tokenizer'):
    tokens.CaptionTokenizer.from_file(str(tmp_path / 'missing.model'), 8)


@pytest.mark.parametrize('sampler', ['ddim', 'ddpm'])
def test_sampler_with_oracle_denoiser_returns_the_caption(tokenizer, sampler):
  captions = ['there is a green triangle in the top right and a white circle in the bottom',
              'red square center']
  ids = tokenizer.text_to_ids(captions)
  codec = analog_bits.BitCodec(tokenizer.num_bits)
  target = codec.encode(jnp.asarray(ids)[..., None])  # [2, 20, 7]
  x0, _ = samplers.sample(lambda x, gamma, sc: target, target.shape, jax.random.PRNGKey(0),
                          gamma_fn=schedules.cosine_gamma, steps=5, sampler=sampler, td=2.0)
  assert tokenizer.ids_to_text(np.asarray(codec.decode(x0)[..., 0])) == captions


def test_tokenizer_training_is_deterministic():
  """The shapes config trains its tokenizer at every start-up: ids must not move between runs."""
  captions = scenes.ShapesSource('test', 16).all_captions()
  assert tokens.train_tokenizer(captions, 64, 'bpe') == tokens.train_tokenizer(captions, 64, 'bpe')
