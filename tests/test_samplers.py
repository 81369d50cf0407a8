"""Samplers with oracle denoisers: exact data, the DDIM/DDPM/DPM-Solver++(2M) step algebra, the
probability-flow ODE of Gaussian data, td, guidance, the kept path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_diffusion import analog_bits
from bit_diffusion import diffusion
from bit_diffusion import samplers
from bit_diffusion import schedules

CODEC = analog_bits.BitCodec(5, 'gray', scale=1.0)
DATA = np.random.RandomState(0).randint(0, 32, size=(4, 3, 2, 1)).astype(np.int32)
BITS = CODEC.encode(jnp.asarray(DATA))  # [4, 3, 2, 5]


def _sample(x0_fn, **kwargs):
  run = jax.jit(lambda rng: samplers.sample(x0_fn, BITS.shape, rng, **kwargs))
  return run(jax.random.PRNGKey(1))


@pytest.mark.parametrize('sampler,variance', [('ddim', 'large'), ('ddpm', 'large'),
                                              ('ddpm', 'small'), ('dpm2m', 'large')])
@pytest.mark.parametrize('self_condition', [True, False])
@pytest.mark.parametrize('td', [0.0, 1.5])
def test_oracle_reproduces_the_data(sampler, variance, self_condition, td):
  # An oracle that blends the truth with the self-conditioning input: its estimates are
  # (1 - 0.4**(i + 1)) x0 with self-conditioning and 0.6 x0 without, so the plumbing shows.
  oracle = lambda x, gamma, self_cond: 0.6 * BITS + 0.4 * self_cond
  steps = 7
  x0, x = _sample(oracle, gamma_fn=schedules.cosine_gamma, steps=steps, sampler=sampler, td=td,
                  ddpm_variance=variance, self_condition=self_condition)
  np.testing.assert_array_equal(CODEC.decode(x0), DATA)
  factor = 1 - 0.4**steps if self_condition else 0.6
  np.testing.assert_allclose(x0, factor * BITS, rtol=1e-5)
  assert np.all(np.isfinite(x))


@pytest.mark.parametrize('sampler', ['ddim', 'ddpm', 'dpm2m'])
def test_exact_oracle_ends_at_the_data(sampler):
  # The last step goes to t = 0, where the linear schedule has gamma = 1: both samplers land on
  # the oracle's x0 whatever the noise.
  oracle = lambda x, gamma, self_cond: BITS
  _, x = _sample(oracle, gamma_fn=schedules.linear_gamma, steps=5, sampler=sampler, td=1.0,
                 ddpm_variance='small')
  np.testing.assert_allclose(x, BITS, atol=1e-5)


@pytest.mark.parametrize('steps', [2, 7])
def test_ddim_with_the_exact_oracle_keeps_the_initial_noise(steps):
  # With the true x0, DDIM keeps the implied noise: from x_1 = z (gamma(1) = 0) it moves along
  # x_t = sqrt(gamma(t)) x0 + sqrt(1 - gamma(t)) z, whatever the steps. Here gamma(0) = 0.64, so
  # it ends at 0.8 x0 + 0.6 z, and one step from t = 1 to t = 0 computes exactly that. (Not with
  # td > 0: it tells the network a noisier gamma than the state's, which moves off this path.)
  gamma_fn = lambda t: 0.64 * (1.0 - t)
  oracle = lambda x, gamma, self_cond: BITS
  _, one_step = _sample(oracle, gamma_fn=gamma_fn, steps=1)
  z = (one_step - 0.8 * BITS) / 0.6
  assert 0.7 < float(jnp.std(z)) < 1.3 and abs(float(jnp.mean(z))) < 0.3  # Noise, not data.
  _, x = _sample(oracle, gamma_fn=gamma_fn, steps=steps)
  np.testing.assert_allclose(x, 0.8 * BITS + 0.6 * z, atol=1e-5)


def _gaussian_ode_error(sampler: str, steps: int, spread: float = 0.5) -> float:
  """Largest error of `sampler` against the exact probability-flow ODE of data N(0, spread^2).

  The exact denoiser is E[x0 | x_t] = sqrt(g) s^2 x_t / (g s^2 + 1 - g), and the ODE keeps
  x_t / sqrt(g s^2 + 1 - g) fixed, so from x_1 it ends at x_1 sqrt(v(0) / v(1)), v = g s^2 + 1 - g.
  """
  gamma_fn = schedules.cosine_gamma
  variance = lambda g: g * spread**2 + 1 - g
  oracle = lambda x, gamma, self_cond: (jnp.sqrt(gamma) * spread**2 / variance(gamma))[
      :, None] * x
  x0, x, path = jax.jit(lambda rng: samplers.sample(
      oracle, (256, 1), rng, gamma_fn=gamma_fn, steps=steps, sampler=sampler,
      self_condition=False, keep_path=True))(jax.random.PRNGKey(0))
  exact = path[0] * jnp.sqrt(variance(gamma_fn(0.0)) / variance(gamma_fn(1.0)))
  np.testing.assert_array_equal(path[-1], x)
  return float(jnp.max(jnp.abs(x - exact)))


def test_dpm2m_solves_the_gaussian_ode_to_second_order():
  """DPM-Solver++(2M) against the exact ODE: far closer than DDIM at the same network calls,
  and its error falls at least 3x when the steps double (DDIM's about 2x). Measured: 0.055 and
  0.0045 at 10 and 20 steps, DDIM 0.196 and 0.101."""
  ddim = [_gaussian_ode_error('ddim', steps) for steps in (10, 20)]
  dpm = [_gaussian_ode_error('dpm2m', steps) for steps in (10, 20)]
  assert dpm[0] < ddim[0] / 3 and dpm[1] < ddim[1] / 10, (dpm, ddim)
  assert dpm[1] < dpm[0] / 3, dpm
  assert ddim[1] > ddim[0] / 3, ddim


def test_dpm2m_estimate_by_hand():
  # lambdas -1, 0, 0.5: h = 0.5, h_previous = 1, so D = x0 + 0.25 (x0 - previous).
  estimate = samplers.dpm2m_estimate(jnp.float32(1.0), jnp.float32(0.2), -1.0, 0.0, 0.5)
  assert float(estimate) == pytest.approx(1.2)
  g = jnp.array([0.2, 0.5, 0.9])
  np.testing.assert_allclose(samplers.half_log_snr(g), 0.5 * np.log(g / (1 - g)), rtol=1e-6)


def test_path_gammas_are_the_levels_of_the_kept_states():
  gammas = samplers.path_gammas(schedules.linear_gamma, 4, td=1.0)
  np.testing.assert_allclose(gammas, [0.0, 0.5, 0.75, 1.0, 1.0], atol=1e-6)


def test_ddim_step_by_hand():
  # x_t = 1, x0 = 0.5, gamma 0.36 -> 0.64: eps = (1 - 0.6 * 0.5) / 0.8 = 0.875,
  # x' = 0.8 * 0.5 + 0.6 * 0.875 = 0.925.
  assert float(samplers.ddim_step(jnp.float32(1.0), jnp.float32(0.5), 0.36, 0.64)) == (
      pytest.approx(0.925, abs=1e-6))


def test_ddim_step_keeps_the_noise():
  rng = np.random.RandomState(0)
  x0, eps = rng.randn(2, 1000).astype(np.float32)
  for gamma_now, gamma_next in [(0.1, 0.5), (0.01, 0.99), (0.5, 1.0)]:
    x_t = diffusion.corrupt(x0[None], jnp.array([gamma_now]), eps[None])
    expected = diffusion.corrupt(x0[None], jnp.array([gamma_next]), eps[None])
    np.testing.assert_allclose(samplers.ddim_step(x_t, x0[None], gamma_now, gamma_next), expected,
                               atol=1e-5)


def test_ddpm_small_variance_samples_the_posterior():
  # With the true x0, a 'small'-variance step samples q(x_next | x_t, x0), so x_next has the
  # forward marginal N(sqrt(g_next) x0, 1 - g_next).
  n = 400_000
  gamma_now, gamma_next = 0.3, 0.8
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  x0 = jnp.full((n,), 0.7)
  x_t = diffusion.corrupt(x0, jnp.full((n,), gamma_now), jax.random.normal(keys[0], (n,)))
  x_next = samplers.ddpm_step(x_t, x0, gamma_now, gamma_next, jax.random.normal(keys[1], (n,)),
                              'small')
  assert float(jnp.mean(x_next)) == pytest.approx(np.sqrt(gamma_next) * 0.7, abs=5e-3)
  assert float(jnp.var(x_next)) == pytest.approx(1 - gamma_next, abs=5e-3)
  large = samplers.ddpm_step(x_t, x0, gamma_now, gamma_next, jax.random.normal(keys[1], (n,)),
                             'large')
  assert float(jnp.var(large)) > float(jnp.var(x_next))  # 'large' adds 1 - alpha >= posterior.


def test_step_times_count_td_in_steps():
  t_now, t_next = samplers.step_times(jnp.array(0), 10, 2.0)
  assert float(t_now) == pytest.approx(1.0) and float(t_next) == pytest.approx(0.7)
  t_now, t_next = samplers.step_times(jnp.array(9), 10, 2.0)
  assert float(t_now) == pytest.approx(0.1) and float(t_next) == 0.0
  assert float(samplers.step_times(jnp.array(4), 10, 0.0)[1]) == pytest.approx(0.5)


def test_sampler_is_one_compiled_loop():
  oracle = lambda x, gamma, self_cond: BITS
  jaxpr = jax.make_jaxpr(lambda rng: samplers.sample(
      oracle, BITS.shape, rng, gamma_fn=schedules.cosine_gamma, steps=100))(jax.random.PRNGKey(0))
  assert 'scan' in str(jaxpr) or 'while' in str(jaxpr)
  assert len(str(jaxpr)) < 20_000  # Not unrolled over 100 steps.


GUIDED_LABELS = jnp.array([2, 0])
NULL = 5
# Raw network outputs per label (the stub network below): 1.2 for the labels, 1.6 for the null.
RAW = {2: 1.2, 0: 1.2, NULL: 1.6}


def _stub_output_fn(calls):
  """output_fn whose raw output is RAW[label] everywhere; records the batch of each call."""
  def output_fn(x, gamma, self_cond, labels):
    calls.append(x.shape[0])
    assert gamma.shape == (x.shape[0],) and self_cond.shape == x.shape
    values = jnp.select([labels == k for k in RAW], list(RAW.values()))
    return jnp.broadcast_to(values[:, None], x.shape)
  return output_fn


@pytest.mark.parametrize('prediction', ['x0', 'eps'])
def test_guidance_combines_raw_outputs_then_clips_once(prediction):
  """(1 + w) c - w u on the raw outputs, then x0 and one clip (Ho & Salimans 2022; pix2seq)."""
  to_x0 = diffusion.Diffusion(codec=CODEC, prediction=prediction).clipped_x0  # Clips to [-1, 1].
  w, c, u = 1.0, RAW[2], RAW[NULL]
  x = jnp.array([[0.3, -0.2], [1.0, 0.5]])
  gamma = jnp.array([0.81, 0.36])
  calls = []
  guided = samplers.guided_x0_fn(_stub_output_fn(calls), to_x0, GUIDED_LABELS, NULL, w)
  out = np.asarray(guided(x, gamma, jnp.zeros_like(x)))
  assert calls == [4]  # One pass over cond and uncond together (2B).

  combined = (1 + w) * c - w * u  # 0.8.
  x_np, g = np.asarray(x), np.asarray(gamma)[:, None]
  if prediction == 'x0':
    x0 = lambda raw: np.full_like(x_np, raw)
  else:  # x0 = (x_t - sqrt(1 - gamma) eps) / sqrt(gamma), from the un-doubled x_t and gamma.
    x0 = lambda raw: (x_np - np.sqrt(1 - g) * raw) / np.sqrt(g)
  np.testing.assert_allclose(out, np.clip(x0(combined), -1, 1), atol=1e-6)
  # Clipping each branch first, then combining and clipping again, gives something else here:
  # for x0 prediction clip(2 * clip(1.2) - clip(1.6)) = 1, not 0.8.
  old = np.clip((1 + w) * np.clip(x0(c), -1, 1) - w * np.clip(x0(u), -1, 1), -1, 1)
  assert np.max(np.abs(out - old)) > 0.1


def test_without_guidance_one_conditional_pass():
  to_x0 = diffusion.Diffusion(codec=CODEC).clipped_x0
  x, gamma = jnp.zeros((2, 3)), jnp.ones((2,))
  for labels, guidance in [(GUIDED_LABELS, 0.0), (None, 2.0)]:
    calls, seen = [], []
    output_fn = _stub_output_fn(calls)

    def recording(x, gamma, self_cond, labels, output_fn=output_fn, seen=seen):
      seen.append(labels)
      return output_fn(x, gamma, self_cond, GUIDED_LABELS if labels is None else labels)

    out = samplers.guided_x0_fn(recording, to_x0, labels, NULL, guidance)(x, gamma, x)
    assert calls == [2] and seen[0] is labels
    np.testing.assert_allclose(out, 1.0)  # clip(1.2): the conditional output alone, clipped.


def test_autoguidance_extrapolates_from_the_guide_then_clips_once():
  """x0 = m + w (m - g) on the unclipped estimates of the model and its guide, then one clip
  (Karras et al. 2024); both see the same state and self-conditioning; w = 0 runs the model
  alone."""
  x = jnp.array([[0.3, -0.2], [1.0, 0.5]])
  gamma, self_cond = jnp.array([0.81, 0.36]), jnp.full((2, 2), 0.25)
  seen = []

  def estimate(value):
    def fn(x_in, gamma_in, self_cond_in):
      seen.append((value, x_in, gamma_in, self_cond_in))
      return jnp.full_like(x_in, value) + x_in  # Differs per element: m - g is constant.
    return fn

  clip = lambda x0, x_t, g: jnp.clip(x0, -1.0, 1.0)
  w = 0.5
  out = samplers.autoguided_x0_fn(estimate(0.4), estimate(0.9), clip, w)(x, gamma, self_cond)
  model, guide = 0.4 + np.asarray(x), 0.9 + np.asarray(x)
  np.testing.assert_allclose(out, np.clip(model + w * (model - guide), -1, 1), atol=1e-6)
  # Unclipped, [[0.45, -0.05], [1.15, 0.65]]: the clip acts on the combination only (clipping
  # the model's 1.4 first would give 1.0 + 0.5 (1.0 - 1.9) = 0.55 there).
  np.testing.assert_allclose(out, [[0.45, -0.05], [1.0, 0.65]], atol=1e-6)
  assert [v for v, *_ in seen] == [0.4, 0.9]
  for _, x_in, gamma_in, self_cond_in in seen:
    assert x_in is x and gamma_in is gamma and self_cond_in is self_cond
  seen.clear()
  alone = samplers.autoguided_x0_fn(estimate(0.4), estimate(0.9), clip, 0.0)(x, gamma, self_cond)
  np.testing.assert_allclose(alone, np.clip(model, -1, 1), atol=1e-6)
  assert [v for v, *_ in seen] == [0.4]  # The guide is not run.


def test_guidance_interval_guides_inside_only_and_skips_the_second_pass_outside():
  """With an interval [lo, hi] of gamma (Kynkaanniemi et al. 2024), autoguidance and
  classifier-free guidance weight an example by whether its gamma lies inside (bounds
  included); at a step where none does, the second pass (guide, unconditional) is not run at all:
  a guide or unconditional pass of NaN leaves the result finite. (0, 1) is the plain guidance."""
  x, self_cond = jnp.array([[0.3, -0.2], [0.5, 0.1]]), jnp.zeros((2, 2))
  clip = lambda x0, x_t, g: jnp.clip(x0, -1.0, 1.0)
  model, guide = lambda x, g, s: x + 0.4, lambda x, g, s: x + 0.6
  nan_guide = lambda x, g, s: jnp.full_like(x, jnp.nan)
  w, interval = 0.5, (0.3, 0.7)
  guided_x0 = np.clip(np.asarray(x) + 0.4 - w * 0.2, -1, 1)  # m + w (m - g), m - g = -0.2.
  model_x0 = np.clip(np.asarray(x) + 0.4, -1, 1)
  for gamma, expected in [([0.3, 0.7], [guided_x0[0], guided_x0[1]]),  # Both bounds inside.
                          ([0.29, 0.5], [model_x0[0], guided_x0[1]]),
                          ([0.71, 0.9], [model_x0[0], model_x0[1]])]:
    fn = jax.jit(samplers.autoguided_x0_fn(model, guide, clip, w, interval))
    np.testing.assert_allclose(fn(x, jnp.array(gamma), self_cond), expected, atol=1e-6)
  outside = samplers.autoguided_x0_fn(model, nan_guide, clip, w, interval)
  np.testing.assert_allclose(jax.jit(outside)(x, jnp.array([0.1, 0.9]), self_cond), model_x0,
                             atol=1e-6)
  assert np.isnan(outside(x, jnp.array([0.5, 0.9]), self_cond)).all()  # Run inside.
  everywhere = samplers.autoguided_x0_fn(model, guide, clip, w, samplers.EVERYWHERE)
  np.testing.assert_array_equal(everywhere(x, jnp.array([0.0, 1.0]), self_cond),
                                samplers.autoguided_x0_fn(model, guide, clip, w)(
                                    x, jnp.array([0.0, 1.0]), self_cond))

  # Classifier-free guidance: (1 + w) cond - w uncond with the per-example weight; label 10 is
  # the null label, whose output is x + 1 (cond: x + 0.2).
  output = lambda x, g, s, labels: x + jnp.where(labels == 10, 1.0, 0.2)[:, None]
  cfg = samplers.guided_x0_fn(output, clip, jnp.array([3, 4]), 10, w, interval)
  cfg_x0 = np.clip(np.asarray(x) + 0.2 - w * 0.8, -1, 1)
  np.testing.assert_allclose(jax.jit(cfg)(x, jnp.array([0.2, 0.6]), self_cond),
                             [np.clip(np.asarray(x)[0] + 0.2, -1, 1), cfg_x0[1]], atol=1e-6)
  nan_uncond = lambda x, g, s, labels: jnp.where((labels == 10)[:, None], jnp.nan, x + 0.2)
  cfg_outside = samplers.guided_x0_fn(nan_uncond, clip, jnp.array([3, 4]), 10, w, interval)
  np.testing.assert_allclose(cfg_outside(x, jnp.array([0.1, 0.8]), self_cond),
                             np.clip(np.asarray(x) + 0.2, -1, 1), atol=1e-6)


@pytest.mark.parametrize('kwargs,match', [
    (dict(sampler='ddpn'), 'Unknown sampler'), (dict(ddpm_variance='big'), 'variance'),
    (dict(steps=0), 'at least one step'), (dict(td=-1.0), 'td')])
def test_bad_sampler_arguments(kwargs, match):
  args = dict(gamma_fn=schedules.cosine_gamma, steps=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    samplers.sample(lambda *a: BITS, BITS.shape, jax.random.PRNGKey(0), **args)


def test_ddpm_mean_is_the_papers_formula():
  rng = np.random.RandomState(1)
  x_t, x0 = rng.randn(2, 50).astype(np.float32)
  gamma_now, gamma_next = 0.2, 0.6
  eps = (x_t - np.sqrt(gamma_now) * x0) / np.sqrt(1 - gamma_now)
  alpha = gamma_now / gamma_next
  paper = (x_t - (1 - alpha) / np.sqrt(1 - gamma_now) * eps) / np.sqrt(alpha)
  ours = samplers.ddpm_step(x_t, x0, gamma_now, gamma_next, np.zeros(50, np.float32))
  np.testing.assert_allclose(ours, paper, rtol=1e-5, atol=1e-5)
