"""Noise schedules: endpoints, monotonicity, the paper's cosine formula, config errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from bit_diffusion import schedules

ALL = [('cosine', {}), ('linear', {}), ('cosine_tau', dict(start=0.2, end=1.0, tau=2.0)),
       ('cosine_tau', {}), ('sigmoid', dict(start=-3.0, end=3.0, tau=0.9)),
       ('sigmoid', dict(start=0.0, end=3.0, tau=0.3))]


@pytest.mark.parametrize('name,kwargs', ALL)
def test_endpoints_and_monotone(name, kwargs):
  gamma_fn = schedules.get_gamma_fn(name, **kwargs)
  t = jnp.linspace(0.0, 1.0, 1001)
  gamma = np.asarray(gamma_fn(t))
  assert gamma[0] == pytest.approx(1.0, abs=1e-6)
  assert gamma[-1] == pytest.approx(0.0, abs=1e-6)
  assert np.all(np.diff(gamma) <= 1e-7), 'gamma(t) must not increase'
  assert np.all((gamma >= 0) & (gamma <= 1))
  assert np.all(gamma[1:-1] < 1) and np.all(gamma[1:-1] > 0)


def test_cosine_is_the_papers_formula():
  t = np.array([0.0, 0.25, 0.5, 1.0])
  expected = np.cos(((t + 2e-4) / (1 + 2.5e-4)) * np.pi / 2) ** 2
  np.testing.assert_allclose(schedules.get_gamma_fn('cosine')(t), expected, rtol=1e-6, atol=1e-8)
  assert float(schedules.cosine_gamma(0.5)) == pytest.approx(0.5, abs=1e-3)


def test_linear_and_tau_schedules_shapes():
  np.testing.assert_allclose(schedules.linear_gamma(jnp.array([0.0, 0.3, 0.9])), [1.0, 0.7, 0.1],
                             rtol=1e-6)
  plain = schedules.get_gamma_fn('cosine_tau')
  np.testing.assert_allclose(plain(jnp.array([0.5])), [0.5], atol=1e-6)
  steeper = schedules.get_gamma_fn('cosine_tau', tau=2.0)
  assert float(steeper(jnp.array(0.5))) < 0.5  # A larger tau removes signal sooner.


@pytest.mark.parametrize('name,kwargs', ALL)
def test_gamma_never_reaches_zero(name, kwargs):
  """As the authors' code: gamma is clipped at 1e-9 (the plain cosine ends at ~6e-9 by itself),
  so sqrt(gamma) and an eps prediction's x0 = (x_t - sqrt(1 - gamma) eps) / sqrt(gamma) stay
  finite at t = 1."""
  gamma = float(schedules.get_gamma_fn(name, **kwargs)(jnp.array(1.0)))
  if name == 'cosine':
    assert gamma == pytest.approx(6.2e-9, rel=0.02)
  else:
    assert gamma == pytest.approx(1e-9, rel=1e-6)


@pytest.mark.parametrize('name,kwargs,match', [
    ('cosne', {}, 'Unknown noise schedule'),
    ('sigmoid', dict(start=3.0, end=-3.0), 'start < end'),
    ('cosine_tau', dict(start=0.5, end=0.2), 'start < end'),
])
def test_bad_schedules(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    schedules.get_gamma_fn(name, **kwargs)
