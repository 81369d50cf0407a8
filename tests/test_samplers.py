"""Samplers with oracle denoisers: exact data, the DDIM/DDPM step algebra, td, guidance."""

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
                                              ('ddpm', 'small')])
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


@pytest.mark.parametrize('sampler', ['ddim', 'ddpm'])
def test_exact_oracle_ends_at_the_data(sampler):
  oracle = lambda x, gamma, self_cond: BITS
  x0, x = _sample(oracle, gamma_fn=schedules.linear_gamma, steps=5, sampler=sampler, td=1.0,
                  ddpm_variance='small')
  np.testing.assert_array_equal(x0, BITS)
  # At t = 0 (gamma = 1 for the linear schedule) both samplers land exactly on x0.
  np.testing.assert_allclose(x, BITS, atol=1e-5)


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


def test_guidance_combines_conditional_and_unconditional():
  labels = jnp.array([2, 0])

  def x0_fn(x, gamma, self_cond, labels):  # The estimate is 0.1 * label, per example.
    return jnp.broadcast_to((0.1 * labels)[:, None], x.shape)

  guided = samplers.guided_x0_fn(x0_fn, labels, null_label=5, guidance=1.5, scale=1.0)
  out = guided(jnp.zeros((2, 3)), jnp.ones((2,)), jnp.zeros((2, 3)))
  # (1 + w) * 0.1 * label - w * 0.1 * 5, clipped to [-1, 1].
  np.testing.assert_allclose(out[:, 0], np.clip(2.5 * 0.1 * np.array([2, 0]) - 0.75, -1, 1),
                             atol=1e-6)
  plain = samplers.guided_x0_fn(x0_fn, labels, null_label=5, guidance=0.0, scale=1.0)
  np.testing.assert_allclose(plain(jnp.zeros((2, 3)), None, None)[:, 0], [0.2, 0.0])


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
