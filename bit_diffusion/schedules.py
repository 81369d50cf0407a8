"""Noise schedules gamma(t): the signal fraction at time t, gamma(0) = 1 (clean), gamma(1) ~ 0.

The forward process is x_t = sqrt(gamma(t)) x_0 + sqrt(1 - gamma(t)) eps (paper Eq. 1). Each
schedule is a pure function of t in [0, 1]; `get_gamma_fn` picks one from the config. As in the
authors' code, no schedule reaches 0: 'linear', 'cosine_tau' and 'sigmoid' are clipped to
[1e-9, 1], and the paper's 'cosine' ends at about 6e-9 through its offsets.
"""

import functools
from typing import Callable

import jax.numpy as jnp

GammaFn = Callable[[jnp.ndarray], jnp.ndarray]
SCHEDULES = ('cosine', 'cosine_tau', 'sigmoid', 'linear')


def cosine_gamma(t: jnp.ndarray, ns: float = 2e-4, ds: float = 2.5e-4) -> jnp.ndarray:
  """The paper's default: gamma(t) = cos(((t + ns) / (1 + ds)) * pi / 2)**2."""
  return jnp.cos(((t + ns) / (1 + ds)) * jnp.pi / 2) ** 2


def linear_gamma(t: jnp.ndarray, clip_min: float = 1e-9) -> jnp.ndarray:
  """gamma(t) = 1 - t, clipped to [clip_min, 1] as `simple_linear_schedule` in pix2seq.

  The clip keeps gamma(1) > 0, like the other schedules, so that sqrt(gamma) and log(gamma)
  stay finite and an eps prediction can still be turned into x0 at t = 1.
  """
  return jnp.clip(1.0 - t, clip_min, 1.0)


def cosine_tau_gamma(t: jnp.ndarray, start: float = 0.0, end: float = 1.0, tau: float = 1.0,
                     clip_min: float = 1e-9) -> jnp.ndarray:
  """cos(pi/2 * (t (end - start) + start))**(2 tau), renormalised to gamma(0)=1, gamma(1)=0.

  As `cosine_schedule` in the authors' pix2seq code (and Chen 2023, "On the importance of noise
  scheduling"); start=0, end=1, tau=1 is the plain cosine schedule without offsets.
  """
  power = 2 * tau
  v_start = jnp.cos(start * jnp.pi / 2) ** power
  v_end = jnp.cos(end * jnp.pi / 2) ** power
  output = jnp.cos((t * (end - start) + start) * jnp.pi / 2) ** power
  output = (v_end - output) / (v_end - v_start)
  return jnp.clip(output, clip_min, 1.0)


def sigmoid_gamma(t: jnp.ndarray, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                  clip_min: float = 1e-9) -> jnp.ndarray:
  """sigmoid(-(t (end - start) + start) / tau), renormalised to gamma(0)=1, gamma(1)=0.

  As `sigmoid_schedule` in pix2seq; (start, end, tau) = (-3, 3, 0.9) is a common choice.
  """
  sigmoid = lambda x: 1 / (1 + jnp.exp(-x))
  v_start = sigmoid(start / tau)
  v_end = sigmoid(end / tau)
  output = sigmoid((t * (end - start) + start) / tau)
  output = (v_end - output) / (v_end - v_start)
  return jnp.clip(output, clip_min, 1.0)


def get_gamma_fn(name: str, start: float = 0.0, end: float = 1.0, tau: float = 1.0) -> GammaFn:
  """Returns gamma(t) for a schedule name in SCHEDULES (start, end, tau for the tau variants)."""
  if name == 'cosine':
    return cosine_gamma
  if name == 'linear':
    return linear_gamma
  if name == 'cosine_tau':
    if not 0 <= start < end <= 1:
      raise ValueError(f"'cosine_tau' needs 0 <= start < end <= 1, got start={start}, end={end}.")
    return functools.partial(cosine_tau_gamma, start=start, end=end, tau=tau)
  if name == 'sigmoid':
    if not start < end or tau <= 0:
      raise ValueError(f"'sigmoid' needs start < end and tau > 0, got ({start}, {end}, {tau}); "
                       'the paper-style choice is (-3, 3, 0.9).')
    return functools.partial(sigmoid_gamma, start=start, end=end, tau=tau)
  raise ValueError(f'Unknown noise schedule {name!r}; choose one of {SCHEDULES}.')


def gamma_fn_from_config(diffusion_config) -> GammaFn:
  return get_gamma_fn(diffusion_config.schedule, diffusion_config.schedule_start,
                      diffusion_config.schedule_end, diffusion_config.schedule_tau)
