"""DisCo-Diff: the relaxation, extraction, latent dropout, guidance, the prior and the two
stages, on oracles and closed forms; then one tiny training through the engine (stages, resume
after a preemption, sampling, the latents' eval)."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bit_diffusion import analog_bits
from bit_diffusion import diffusion as diffusion_lib
from bit_diffusion import disco
from bit_diffusion import engine as engine_lib
from bit_diffusion import methods
from bit_diffusion import samplers
from bit_diffusion import train_loop
from bit_diffusion.methods import autoregressive
from bit_diffusion.points import evaluate as points_evaluate
from configs import tiny
from configs import toy_disco

LOGITS = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))  # [1, k]: a known categorical.


def test_gumbel_softmax_rows_sum_to_one_and_tend_to_a_categorical_draw():
  logits = jnp.tile(LOGITS, (20_000, 1))
  soft = disco.gumbel_softmax(jax.random.PRNGKey(0), logits, 1.0)
  np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-5)
  assert float(soft.max(-1).mean()) < 0.9  # At tau = 1 the rows are far from one-hot.
  cold = disco.gumbel_softmax(jax.random.PRNGKey(0), logits, 1e-3)
  # tau -> 0: one-hot (but for near-ties of the Gumbel draws, closer than tau) ...
  assert float(jnp.mean(cold.max(-1) > 0.99)) > 0.995
  frequencies = np.bincount(np.asarray(cold.argmax(-1)), minlength=4) / len(logits)
  np.testing.assert_allclose(frequencies, [0.5, 0.25, 0.15, 0.1], atol=0.01)  # ... of a draw.


def test_gumbel_softmax_passes_gradients_and_straight_through_is_hard():
  weights = jnp.arange(4.0)
  value = lambda logits, hard: jnp.sum(disco.gumbel_softmax(
      jax.random.PRNGKey(1), logits, 1.0, hard) * weights)
  soft_grad = jax.grad(value)(LOGITS, False)
  assert float(jnp.abs(soft_grad).sum()) > 1e-3
  hard = disco.gumbel_softmax(jax.random.PRNGKey(1), LOGITS, 1.0, True)
  assert sorted(np.asarray(hard[0]).tolist()) == [0.0, 0.0, 0.0, 1.0]
  np.testing.assert_allclose(jax.grad(value)(LOGITS, True), soft_grad, rtol=1e-6)


def test_extraction_is_the_argmax_and_deterministic():
  logits = jax.random.normal(jax.random.PRNGKey(2), (64, 3, 5))
  codes = disco.extract_codes(logits)
  assert codes.shape == (64, 3) and codes.dtype == jnp.int32
  np.testing.assert_array_equal(codes, jnp.argmax(logits, -1))
  np.testing.assert_array_equal(disco.extract_codes(logits), codes)
  sampled = disco.extract_codes(jnp.tile(LOGITS, (20_000, 1))[:, None], 'sample',
                                jax.random.PRNGKey(3))  # The authors' 0.01: a draw.
  np.testing.assert_allclose(np.bincount(np.asarray(sampled[:, 0]), minlength=4) / 20_000,
                             [0.5, 0.25, 0.15, 0.1], atol=0.01)
  with pytest.raises(ValueError, match='Unknown disco.extraction'):
    disco.extract_codes(logits, 'mode')


def test_latent_dropout_rate_and_null_embedding():
  latents = jnp.ones((20_000, 2, 3))
  null = jnp.full((2, 3), -5.0)
  dropped = disco.drop_latents(jax.random.PRNGKey(4), latents, null, 0.1)
  is_null = np.asarray(jnp.all(dropped == -5.0, axis=(1, 2)))
  is_kept = np.asarray(jnp.all(dropped == 1.0, axis=(1, 2)))
  assert np.all(is_null | is_kept)  # All m latents of an example go together.
  assert is_null.mean() == pytest.approx(0.1, abs=0.006)


def test_guidance_combines_the_latent_and_null_passes():
  """(1 + w) D(x; z) - w D(x; null), with the null condition given as an array, in one 2B pass
  (samplers.guided_x0_fn, as for labels)."""
  context, null = jnp.full((2, 3), 1.2), jnp.full((2, 3), 1.6)
  calls = []

  def output_fn(x, gamma, self_cond, cond):
    calls.append(x.shape[0])
    return x + cond[:, :1]

  x = jnp.array([[0.1], [0.2]])
  guided = samplers.guided_x0_fn(output_fn, lambda out, x, g: out, context, null, 2.0)
  out = guided(x, jnp.ones(2), x)
  assert calls == [4]
  np.testing.assert_allclose(out, disco.guided_output(x + 1.2, x + 1.6, 2.0), rtol=1e-6)
  np.testing.assert_allclose(out, x + 3 * 1.2 - 2 * 1.6, rtol=1e-6)


def _toy_loss_terms(encoder_weights, prior_bias, rng=jax.random.PRNGKey(5)):
  """disco.loss_terms with linear stand-ins for the networks: encoder logits = bits W, a
  denoiser that adds its latents' first channel, a prior of fixed logits."""
  codec = analog_bits.BitCodec(2)
  bits = codec.encode(jnp.array([[0], [1], [2], [3]] * 4))  # [16, 2]
  diffusion = diffusion_lib.Diffusion(codec=codec, self_condition_rate=0.5)
  codebook = jnp.arange(6.0).reshape(1, 3, 2)

  def denoise_fn(x_t, gamma, self_cond, cond, dropout_rng):
    _, latents = cond
    return x_t * 0.5 + latents[:, 0, :1]

  return disco.loss_terms(
      diffusion, encode_fn=lambda b: (b @ encoder_weights)[:, None, :],
      embed_fn=lambda one_hot: jnp.einsum('bmk,mke->bme', one_hot, codebook),
      null_embedding=jnp.zeros((1, 2)), denoise_fn=denoise_fn,
      prior_logits_fn=lambda codes: jnp.broadcast_to(prior_bias, codes.shape + (3,)),
      bits=bits, cond=None, rng=rng)


def test_the_diffusion_loss_trains_the_encoder_and_the_prior_loss_does_not():
  weights, bias = jnp.ones((2, 3)) * jnp.array([1.0, 0.0, -1.0]), jnp.zeros(3)
  terms = _toy_loss_terms(weights, bias)
  assert terms.diffusion.loss.shape == (16,) and terms.prior_loss.shape == (16,)
  diffusion_grad = jax.grad(lambda w: jnp.mean(_toy_loss_terms(w, bias).diffusion.loss))(weights)
  assert float(jnp.abs(diffusion_grad).sum()) > 1e-4  # Through the Gumbel-softmax.
  prior_grads = jax.grad(lambda w, b: jnp.mean(_toy_loss_terms(w, b).prior_loss),
                         argnums=(0, 1))(weights, bias)
  np.testing.assert_array_equal(prior_grads[0], 0.0)  # The codes are stop-gradient.
  assert float(jnp.abs(prior_grads[1]).sum()) > 0
  np.testing.assert_allclose(terms.prior_loss, np.log(3), rtol=1e-6)  # Uniform prior.


def test_two_stage_optimizer_freezes_all_but_the_prior_after_the_first_stage():
  params = {'prior': jnp.zeros(3), 'denoiser': jnp.zeros(3)}
  grads = {'prior': jnp.ones(3), 'denoiser': jnp.ones(3) * 100.0}
  optimizer = disco.two_stage_optimizer(
      optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)), 2,
      lambda path: path[0].key == 'prior')
  state = optimizer.init(params)
  history = []
  for _ in range(4):
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append(jax.tree.map(float, {k: v[0] for k, v in params.items()}))
  # Each group is clipped on its own: the prior's step is 0.1 * 1 / sqrt(3), not shrunk by the
  # denoiser's large gradient; the denoiser moves twice, then stops exactly.
  step = 0.1 / np.sqrt(3)
  assert [h['prior'] for h in history] == pytest.approx([-step, -2 * step, -3 * step, -4 * step])
  assert [h['denoiser'] for h in history] == pytest.approx([-step, -2 * step, -2 * step,
                                                           -2 * step])


def test_the_prior_learns_known_code_frequencies():
  """The method's prior (an autoregressive Transformer over m = 1 code: a categorical) fitted
  by its loss to codes of known frequencies, then sampled."""
  config = tiny.tiny_toy(toy_disco, **{'disco.codebook_size': 4})
  method = methods.create(config)
  graphdef, _ = engine_lib.abstract_network(method)
  params = engine_lib.Engine(config, method).init_state(jax.random.PRNGKey(0)).params
  codes = jnp.asarray(np.repeat([0, 1, 2, 3], [50, 25, 15, 10])[:, None], jnp.int32)
  optimizer = optax.adam(0.05)

  def prior_loss(params):
    model = nnx.merge(graphdef, params)
    logits = model.prior(autoregressive.shift_right(codes, model.prior.start_id), None)
    return jnp.mean(disco.prior_nll(logits, codes))

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(prior_loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for _ in range(150):
    params, opt_state = step(params, opt_state)
  entropy = -np.sum(np.array([0.5, 0.25, 0.15, 0.1]) * np.log([0.5, 0.25, 0.15, 0.1]))
  assert float(prior_loss(params)) == pytest.approx(entropy, abs=0.01)  # The MLE.
  drawn = np.asarray(method.make_prior_sample_fn(graphdef)(params, jax.random.PRNGKey(6),
                                                            4000))
  np.testing.assert_allclose(np.bincount(drawn[:, 0], minlength=4) / 4000,
                             [0.5, 0.25, 0.15, 0.1], atol=0.025)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.fixture(scope='module')
def disco_runs(tmp_path_factory):
  """The tiny config straight through (steps 1-2: first stage; 3-4: the prior's), and the same
  preempted (SIGTERM) during step 2, which saves step 3 and stops, then resumed."""
  straight_dir = str(tmp_path_factory.mktemp('straight'))
  states = {}
  on_metrics = lambda step, scalars: states.setdefault(step, scalars)
  straight = train_loop.train_and_evaluate(tiny.tiny_toy(toy_disco), straight_dir,
                                           on_metrics=on_metrics)
  resumed_dir = str(tmp_path_factory.mktemp('resumed'))
  preempt = lambda step, scalars: step == 2 and os.kill(os.getpid(), signal.SIGTERM)
  first = train_loop.train_and_evaluate(tiny.tiny_toy(toy_disco), resumed_dir,
                                        on_metrics=preempt)
  resumed = train_loop.train_and_evaluate(tiny.tiny_toy(toy_disco), resumed_dir)
  return straight_dir, straight, first, resumed, states


def test_training_logs_the_latent_metrics(disco_runs):
  *_, logged = disco_runs
  assert {'train/prior_loss', 'train/code_entropy', 'train/loss'} <= set(logged[2])


def test_resumed_run_equals_straight_run(disco_runs):
  _, straight, first, resumed, _ = disco_runs
  assert int(first.step) == 3 and int(resumed.step) == 4
  for a, b in zip(_leaves(straight), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_second_stage_moves_only_the_prior(disco_runs):
  _, straight, first, _, _ = disco_runs  # `first` stopped after step 3, in the second stage.
  for name in ('encoder', 'denoiser', 'codebook', 'null_embedding'):
    for a, b in zip(_leaves(first.params[name]), _leaves(straight.params[name])):
      np.testing.assert_array_equal(a, b)  # Frozen since step 2.
  moved = [not np.array_equal(a, b) for a, b in zip(_leaves(first.params['prior']),
                                                    _leaves(straight.params['prior']))]
  assert any(moved)


def test_sampling_and_eval_of_a_trained_checkpoint(disco_runs):
  workdir = disco_runs[0]
  config = tiny.tiny_toy(toy_disco, **{'disco.guidance': 1.0})
  path = points_evaluate.sample_from_checkpoint(config, workdir)
  with np.load(path) as data:
    assert data['values'].shape == (12, 2)
  results = points_evaluate.evaluate_checkpoint(tiny.tiny_toy(toy_disco), workdir)
  latents = results['latents']
  assert 1 <= latents['codes_used'] <= 8 and 0 <= latents['prior_tv'] <= 1
  assert 0 <= latents['mode_information'] <= 1 + 1e-9


def test_checks_of_the_stages_and_guidance():
  check = lambda **o: engine_lib.check_config(tiny.tiny_toy(toy_disco, **o),
                                              methods.create(tiny.tiny_toy(toy_disco, **o)), 1, 1)
  check()
  with pytest.raises(ValueError, match='disco.prior_steps=4 must lie in'):
    check(**{'disco.prior_steps': 4})
  with pytest.raises(ValueError, match='latent_dropout > 0'):
    check(**{'disco.guidance': 1.0, 'disco.latent_dropout': 0.0})
  method = methods.create(tiny.tiny_toy(toy_disco))
  method.check_restored(4)
  with pytest.raises(ValueError, match='holds no fitted latent prior'):
    method.check_restored(3)
