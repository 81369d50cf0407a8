"""The sequence Transformers: cached decoding equals the full causal pass, and the
autoregressive sampler equals a decoder that recomputes the whole prefix at every position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bit_diffusion import engine
from bit_diffusion import methods
from bit_diffusion import transformer
from bit_diffusion.methods import autoregressive
from configs import text_ar
from configs import tiny

# Jitted: one compile per model instead of one per operation of every eager call.
_logits = nnx.jit(lambda model, tokens, context: model.logits(tokens, context))
_logits_step = nnx.jit(lambda model, *args: model.logits_step(*args))


def test_cached_decoding_equals_the_causal_pass_with_and_without_a_context():
  for context_width, positions in ((0, 'learned'), (12, 'learned'), (0, 'rotary')):
    model = transformer.AutoregressiveTransformer(
        vocab_size=11, max_length=7, width=16, depth=2, mlp_dim=32, num_heads=2,
        encoder_width=context_width, positions=positions, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 7), 0, 11)
    context = jax.random.normal(jax.random.key(2), (3, 5, 12)) if context_width else None
    full = _logits(model, autoregressive.shift_right(tokens, model.start_id), context)
    cache, token_in, steps = model.init_cache(3), jnp.full((3,), model.start_id), []
    for i in range(7):
      logits, cache = _logits_step(model, token_in, context, cache, jnp.int32(i))
      steps.append(logits)
      token_in = tokens[:, i]
    np.testing.assert_allclose(jnp.stack(steps, axis=1), full, atol=1e-5)
    # Position i depends on tokens < i only: changing the last token changes no logit.
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 11)
    np.testing.assert_array_equal(
        _logits(model, autoregressive.shift_right(changed, model.start_id), context), full)


def _recomputing_sampler(graphdef, params, rng, batch, length, temperature):
  """The reference: every position from a full causal pass over the prefix (L passes of L)."""
  model = nnx.merge(graphdef, params)
  tokens = jnp.zeros((batch, length), jnp.int32)
  for i in range(length):
    logits = model.logits(autoregressive.shift_right(tokens, model.start_id), None)[:, i]
    if temperature:
      token = jax.random.categorical(jax.random.fold_in(rng, i), logits / temperature)
    else:
      token = jnp.argmax(logits, axis=-1)
    tokens = tokens.at[:, i].set(token.astype(jnp.int32))
  return tokens


def test_autoregressive_sampler_equals_recomputing_the_prefix():
  config = tiny.tiny_text(text_ar)
  method = methods.create(config)
  graphdef, params = nnx.split(method.create_network(jax.random.key(3)), nnx.Param)
  # Random weights give near-uniform logits; scale the output layer so that the argmax and the
  # draws depend on the context.
  params['logits_out']['kernel'].value = params['logits_out']['kernel'].value * 30.0
  rng, cond = engine.seed_key(0, 'sample'), jnp.zeros((5,), jnp.int32)
  for temperature in (0.0, 1.0):
    tokens = method.make_sample_fn(graphdef, temperature=temperature)(params, rng, cond)
    expected = _recomputing_sampler(graphdef, params, rng, 5, 16, temperature)
    np.testing.assert_array_equal(tokens, expected)
    tokens = np.asarray(tokens)
    assert len(np.unique(tokens[0])) > 1  # The tokens depend on the prefix.
    # Greedy decoding gives every row the same sequence; sampling draws different ones.
    assert (len(np.unique(tokens, axis=0)) == 1) == (temperature == 0.0)


def test_unconditional_denoiser_ignores_the_condition():
  model = transformer.DenoisingTransformer(in_channels=10, out_channels=5, max_length=6,
                                           width=16, depth=1, mlp_dim=32, num_heads=2,
                                           rngs=nnx.Rngs(0))
  model.bits_out.kernel.value = jax.random.normal(jax.random.key(1), (16, 5))  # Not zeros.
  x = jax.random.normal(jax.random.key(2), (3, 6, 10))
  gamma = jnp.array([0.1, 0.5, 0.9])
  out = model(x, gamma, None)
  assert out.shape == (3, 6, 5)
  np.testing.assert_array_equal(out, model(x, gamma, jnp.arange(3)))
  np.testing.assert_array_equal(out, model.denoise(x, gamma, model.encode_condition(None)))
  assert not np.allclose(out[0], model(x, gamma[::-1], None)[0])  # gamma is read.


def test_denoiser_reads_a_noise_level_per_position():
  """gamma [B, L] equal along L gives the output of gamma [B]; a different level at one
  position changes the output there (and, through attention, elsewhere)."""
  model = transformer.DenoisingTransformer(in_channels=10, out_channels=5, max_length=6,
                                           width=16, depth=1, mlp_dim=32, num_heads=2,
                                           positions='rotary', rngs=nnx.Rngs(0))
  model.bits_out.kernel.value = jax.random.normal(jax.random.key(1), (16, 5))
  x = jax.random.normal(jax.random.key(2), (3, 6, 10))
  gamma = jnp.array([0.1, 0.5, 0.9])
  np.testing.assert_allclose(model(x, jnp.tile(gamma[:, None], (1, 6)), None),
                             model(x, gamma, None), atol=1e-6)
  levels = jnp.tile(gamma[:, None], (1, 6)).at[:, 2].set(0.99)
  changed = np.abs(np.asarray(model(x, levels, None) - model(x, gamma, None))).max(axis=(0, 2))
  assert changed[2] > 1e-3 and (changed > 0).all()


def test_rotary_scores_depend_on_the_offset_only():
  """q(m) . k(n) after `rotate` is a function of m - n: shifting both positions by 5 keeps every
  score; the scores differ between offsets; a rotation keeps norms."""
  query, key = jax.random.normal(jax.random.key(0), (2, 1, 1, 8))
  positions = jnp.arange(6)
  tile = lambda x: jnp.tile(x, (1, 6, 1, 1))  # The same vector at every position.
  scores = lambda shift: jnp.einsum('blhd,bmhd->blm', transformer.rotate(tile(query),
                                                                         positions + shift),
                                    transformer.rotate(tile(key), positions + shift))[0]
  np.testing.assert_allclose(scores(5), scores(0), atol=1e-5)
  offsets = np.subtract.outer(np.arange(6), np.arange(6))
  base = np.asarray(scores(0))
  for offset in range(-5, 6):  # Constant along each diagonal, and diagonals differ.
    np.testing.assert_allclose(base[offsets == offset], base[offsets == offset][0], atol=1e-5)
  assert len(np.unique(np.round(base[0], 4))) == 6
  np.testing.assert_allclose(jnp.linalg.norm(transformer.rotate(tile(query), positions), axis=-1),
                             jnp.linalg.norm(tile(query), axis=-1), rtol=1e-5)


def test_rotary_denoiser_has_no_position_table_and_sees_the_order():
  kwargs = dict(in_channels=4, out_channels=2, max_length=6, width=16, depth=1, mlp_dim=32,
                num_heads=2, rngs=nnx.Rngs(0))
  rotary = transformer.DenoisingTransformer(positions='rotary', **kwargs)
  learned = transformer.DenoisingTransformer(**kwargs)
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(learned) - count(rotary) == 6 * 16  # The [1, L, D] table only.
  rotary.bits_out.kernel.value = jax.random.normal(jax.random.key(1), (16, 2))
  x = jax.random.normal(jax.random.key(2), (1, 6, 4))
  out = rotary(x, jnp.array([0.5]), None)
  # Without positions, self-attention is permutation-equivariant; rotary breaks that.
  reversed_out = rotary(x[:, ::-1], jnp.array([0.5]), None)[:, ::-1]
  assert not np.allclose(out, reversed_out, atol=1e-4)
  with pytest.raises(ValueError, match="model.positions='absolute'"):
    transformer.DenoisingTransformer(positions='absolute', **kwargs)


def test_glauber_token_scale_multiplies_the_token_embeddings_only():
  """token_scale='sqrt_width' is the 'one' network with its embedding table times sqrt(width)
  (the time embedding unscaled): exact logits; an unknown scale names the field."""
  kwargs = dict(vocab_size=5, max_length=6, width=16, depth=1, mlp_dim=32, num_heads=2)
  scaled = transformer.GlauberTransformer(token_scale='sqrt_width', rngs=nnx.Rngs(0), **kwargs)
  plain = transformer.GlauberTransformer(rngs=nnx.Rngs(0), **kwargs)
  assert (scaled.token_scale, plain.token_scale) == (4.0, 1.0)
  for model in (scaled, plain):
    model.logits_out.kernel.value = jax.random.normal(jax.random.key(1), (16, 5))
  tokens = jnp.array([[0, 5, 3, 1, 5, 4], [2, 2, 5, 0, 1, 3]])  # 5 is phi.
  time = jnp.array([0.1, 0.7])
  logits = scaled(tokens, time)
  assert not np.allclose(logits, plain(tokens, time), atol=1e-3)
  plain.token_embedding.embedding.value = scaled.token_embedding.embedding.value * 4.0
  np.testing.assert_allclose(plain(tokens, time), logits, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"ggm.token_scale='sqrt'; choose one of \('sqrt_width', "
                     r"'one'\)"):
    transformer.GlauberTransformer(token_scale='sqrt', rngs=nnx.Rngs(0), **kwargs)
