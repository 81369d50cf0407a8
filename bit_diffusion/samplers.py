"""Samplers (Algorithm 2): DDIM, DDPM and DPM-Solver++(2M) reverse steps driven by `lax.fori_loop`.

A sampler knows no network. It calls `x0_fn(x_t, gamma, self_cond) -> x0 estimate in [-b, b]`
(`guided_x0_fn` builds one from the network and `Diffusion.clipped_x0`). Times run from t=1
(noise) to t=0; with the asymmetric time interval td (counted in steps), step i goes from
t_now = 1 - i / steps to t_next = max(1 - (i + 1 + td) / steps, 0), so the network sees a
slightly noisier input than the state it is asked to denoise (paper Sec. 3, Fig. 3).
"""

from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp

from bit_diffusion import schedules

X0Fn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]
# 'ddim' (deterministic, first order), 'ddpm' (ancestral), 'dpm2m' (DPM-Solver++(2M):
# deterministic, second order, one network call per step as DDIM).
SAMPLERS = ('ddim', 'ddpm', 'dpm2m')
DDPM_VARIANCES = ('large', 'small')
INFILL_METHODS = ('replace', 'clean')
EVERYWHERE = (0.0, 1.0)  # The guidance interval of every noise level gamma.


def ddim_step(x_t: jnp.ndarray, x0: jnp.ndarray, gamma_now: jnp.ndarray,
              gamma_next: jnp.ndarray) -> jnp.ndarray:
  """Deterministic DDIM step (Song et al. 2021): keep the implied eps, move to gamma_next.

  eps = (x_t - sqrt(g_now) x0) / sqrt(1 - g_now);  x' = sqrt(g_next) x0 + sqrt(1 - g_next) eps.
  Gammas are scalars (one time for the whole batch); arrays are [B, ...].
  """
  eps = (x_t - jnp.sqrt(gamma_now) * x0) / jnp.sqrt(1 - gamma_now)
  return jnp.sqrt(gamma_next) * x0 + jnp.sqrt(1 - gamma_next) * eps


def ddpm_step(x_t: jnp.ndarray, x0: jnp.ndarray, gamma_now: jnp.ndarray, gamma_next: jnp.ndarray,
              noise: jnp.ndarray, variance: str = 'large') -> jnp.ndarray:
  """Ancestral DDPM step (Ho et al. 2020, Eq. 11) between arbitrary noise levels.

  alpha = g_now / g_next;  x' = (x_t - (1 - alpha) / sqrt(1 - g_now) eps) / sqrt(alpha) + sigma z
  with sigma^2 = 1 - alpha ('large') or (1 - g_next) / (1 - g_now) (1 - alpha) ('small', the
  variance of the posterior q(x_next | x_t, x0)).
  """
  eps = (x_t - jnp.sqrt(gamma_now) * x0) / jnp.sqrt(1 - gamma_now)
  alpha = gamma_now / gamma_next
  # The mean above, rewritten with x_t = sqrt(g_now) x0 + sqrt(1 - g_now) eps so that it stays
  # finite and accurate as g_now -> 0 (the schedules end at gamma ~ 1e-9, where 1 / sqrt(alpha)
  # is ~3e4 and the form above subtracts nearly equal large terms).
  mean = jnp.sqrt(gamma_next) * x0 + jnp.sqrt(alpha) * (1 - gamma_next) / jnp.sqrt(
      1 - gamma_now) * eps
  if variance == 'large':
    sigma_squared = 1 - alpha
  elif variance == 'small':
    sigma_squared = (1 - gamma_next) / (1 - gamma_now) * (1 - alpha)
  else:
    raise ValueError(f'Unknown DDPM variance {variance!r}; choose one of {DDPM_VARIANCES}.')
  return mean + jnp.sqrt(jnp.maximum(sigma_squared, 0.0)) * noise


def half_log_snr(gamma: jnp.ndarray) -> jnp.ndarray:
  """lambda = log(alpha / sigma) = log(gamma / (1 - gamma)) / 2 (Lu et al. 2022)."""
  return 0.5 * (jnp.log(gamma) - jnp.log1p(-gamma))


def dpm2m_estimate(x0: jnp.ndarray, previous_x0: jnp.ndarray, lambda_previous: jnp.ndarray,
                   lambda_now: jnp.ndarray, lambda_next: jnp.ndarray) -> jnp.ndarray:
  """The data estimate D of a DPM-Solver++(2M) step (Lu et al. 2022, "DPM-Solver++", Alg. 2).

  D = x0 + h / (2 h_previous) (x0 - previous_x0) with h = lambda_next - lambda_now and
  h_previous = lambda_now - lambda_previous: x0 extrapolated linearly in lambda to the middle
  of the step. The step itself is `ddim_step(x_t, D, gamma_now, gamma_next)`:
  x' = sigma' / sigma x_t - alpha' (exp(-h) - 1) D, written with gammas. Arrays [B, ...].
  """
  ratio = (lambda_next - lambda_now) / (2 * (lambda_now - lambda_previous))
  return x0 + ratio * (x0 - previous_x0)


def step_times(step: jnp.ndarray, steps: int, td: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(t_now, t_next) of sampling step `step` in [0, steps), with td counted in steps."""
  t_now = 1.0 - step / steps
  t_next = jnp.maximum(1.0 - (step + 1 + td) / steps, 0.0)
  return t_now, t_next


def path_gammas(gamma_fn: schedules.GammaFn, steps: int, td: float = 0.0) -> jnp.ndarray:
  """The noise levels of the states a `keep_path` run returns: gamma(1), then gamma(t_next)
  of every step; float32 [steps + 1]."""
  _, t_next = step_times(jnp.arange(steps), steps, td)
  return gamma_fn(jnp.concatenate([jnp.ones((1,)), t_next]))


def sample(x0_fn: X0Fn, shape: tuple[int, ...], rng: jax.Array, *,
           gamma_fn: schedules.GammaFn, steps: int, sampler: str = 'ddim', td: float = 0.0,
           ddpm_variance: str = 'large', self_condition: bool = True,
           known: Optional[tuple[jnp.ndarray, jnp.ndarray]] = None,
           infill: str = 'replace', keep_path: bool = False) -> tuple[jnp.ndarray, ...]:
  """Runs the reverse process from Gaussian noise (Algorithm 2), or fills in a partly known x0.

  Infilling (`known`) by replacement (Song et al. 2021, "Score-based generative modeling through
  SDEs", Sec. 5 and App. I.2; RePaint, Lugmayr et al. 2022, without its resampling): before each
  network call the known channels of the state are replaced by the known bits noised to the
  current level, sqrt(g_now) x0 + sqrt(1 - g_now) z with fresh z, and the known channels of
  the x0 estimate (fed back as self-conditioning and used by the step) by the known bits.
  `infill='clean'` (sequences [B, L, D] only, for a denoiser trained with a noise level per
  position: `diffusion.position_noise_rate`) instead gives the known positions clean, at the
  level gamma(0), with gamma [B, L] passed to x0_fn: the unknown positions are denoised next to
  their exact context, as the known part of a window is seen in training.

  Args:
    x0_fn: (x_t [B, ...], gamma [B] ([B, L] with infill='clean'), self_cond [B, ...]) ->
      clipped x0 estimate [B, ...].
    shape: [B, ..., D] of the analog bits.
    rng: PRNG key for the initial noise and DDPM's noise.
    gamma_fn: the noise schedule.
    steps: number of network evaluations.
    sampler: 'ddim', 'ddpm' or 'dpm2m' (DPM-Solver++(2M): the first and the last step, and
      a step that reaches t = 0 early (td > 0), are DDIM steps; the others extrapolate x0 from
      the previous estimate, `dpm2m_estimate`).
    td: asymmetric time interval in steps (0 = standard).
    ddpm_variance: 'large' or 'small' (DDPM only).
    self_condition: feed the previous x0 estimate back to the network.
    known: optional (bits float [B, ..., D], mask bool [B, ..., D]): the channels where mask
      is True are known to be those bits; the others are sampled.
    infill: how the known bits enter: 'replace' (re-noised each step) or 'clean' (see above).
    keep_path: also return every state of the path (for its curvature).

  Returns:
    (x0, x): the last x0 estimate, whose sign gives the bits, and the final state x_0, both
    float32 [B, ..., D]; with keep_path, (x0, x, path) with path float32 [steps + 1, B, ..., D]:
    the initial noise, then the state after each step (noise levels: `path_gammas`).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f'Unknown sampler {sampler!r}; choose one of {SAMPLERS}.')
  if ddpm_variance not in DDPM_VARIANCES:
    raise ValueError(f'Unknown DDPM variance {ddpm_variance!r}; choose one of {DDPM_VARIANCES}.')
  if steps < 1:
    raise ValueError(f'Sampling needs at least one step, got steps={steps}.')
  if td < 0:
    raise ValueError(f'td must be >= 0 (counted in steps), got {td}.')
  if infill not in INFILL_METHODS:
    raise ValueError(f'Unknown infill method {infill!r}; choose one of {INFILL_METHODS}.')
  clean = known is not None and infill == 'clean'
  if clean and len(shape) != 3:
    raise ValueError(f"infill='clean' gives each sequence position its own noise level; it needs "
                     f'sequences [B, L, D], got shape {shape}.')
  init_rng, loop_rng = jax.random.split(rng)
  known_rng = jax.random.fold_in(init_rng, 1)  # Infilling's noise; sampling's draws unchanged.
  x = jax.random.normal(init_rng, shape, jnp.float32)
  batch = shape[0]
  zeros = jnp.zeros(shape, jnp.float32)
  path = jnp.zeros((steps + 1,) + tuple(shape), jnp.float32).at[0].set(x) if keep_path else None

  def body(step, carry):
    x, x0, path = carry
    previous_t = 1.0 - (step - 1) / steps  # Where the x0 of the carry was estimated.
    t_now, t_next = step_times(step, steps, td)
    gamma_now, gamma_next = gamma_fn(t_now), gamma_fn(t_next)
    gamma = jnp.full((batch,), gamma_now)
    if clean:  # The known positions exact, at the level of t = 0; the others at gamma_now.
      x = jnp.where(known[1], known[0], x)
      gamma = jnp.where(jnp.all(known[1], axis=-1), gamma_fn(jnp.float32(0.0)), gamma_now)
    elif known is not None:
      z = jax.random.normal(jax.random.fold_in(known_rng, step), shape, jnp.float32)
      x = jnp.where(known[1], jnp.sqrt(gamma_now) * known[0] + jnp.sqrt(1 - gamma_now) * z, x)
    self_cond = x0 if self_condition else jnp.zeros_like(x)
    previous_x0 = x0  # The estimate of the step before (dpm2m).
    x0 = x0_fn(x, gamma, self_cond).astype(jnp.float32)
    if known is not None:
      x0 = jnp.where(known[1], known[0], x0)
    if sampler == 'ddim':
      x = ddim_step(x, x0, gamma_now, gamma_next)
    elif sampler == 'dpm2m':
      lambdas = half_log_snr(gamma_fn(previous_t)), half_log_snr(gamma_now), half_log_snr(
          gamma_next)
      first_order = (step == 0) | (step == steps - 1) | (t_next <= 0)
      estimate = jnp.where(first_order, x0, dpm2m_estimate(x0, previous_x0, *lambdas))
      x = ddim_step(x, estimate, gamma_now, gamma_next)
    else:
      noise = jax.random.normal(jax.random.fold_in(loop_rng, step), shape, jnp.float32)
      x = ddpm_step(x, x0, gamma_now, gamma_next, noise, ddpm_variance)
    if keep_path:
      path = path.at[step + 1].set(x)
    return x, x0, path

  x, x0, path = jax.lax.fori_loop(0, steps, body, (x, zeros, path))
  return (x0, x, path) if keep_path else (x0, x)


def guided_x0_fn(output_fn: Callable[..., jnp.ndarray],
                 to_x0: Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray],
                 labels: Any, null_label: Any, guidance: float,
                 interval: tuple[float, float] = EVERYWHERE) -> X0Fn:
  """The sampler's x0_fn: the network with its labels bound, with classifier-free guidance.

  Classifier-free guidance (Ho & Salimans 2022) with weight w combines the RAW network outputs,

      output = (1 + w) * output_fn(x_t, gamma, self_cond, labels)
               - w * output_fn(x_t, gamma, self_cond, null labels),

  and only then turns the combination into an x0 estimate and clips it, once, with `to_x0`: as
  the authors' code (pix2seq `diffusion_utils.Scheduler.generate`: `pred_out_l * (1 + guidance)
  - pred_out_nl * guidance`, then `get_x0_eps` with the x0 clip). Clipping each branch first
  would cap a guided estimate that the unclipped outputs push past the range. The conditional
  and unconditional passes run as one batch of 2B.

  Args:
    output_fn: (x_t [B, ...], gamma [B], self_cond [B, ...], labels [B] or None) -> raw network
      output [B, ...] (an x0, eps or v prediction, or logits).
    to_x0: (output, x_t, gamma) -> clipped x0 estimate [B, ...] (`Diffusion.clipped_x0`).
    labels: int [B], or None for an unconditional model; or any condition with a leading batch
      axis (a pytree: DisCo-Diff's encoded latents).
    null_label: the label that means "no class" (`num_classes`); or, for a condition that is
      not a label, the unconditional condition itself, shaped like `labels` (DisCo-Diff: the
      encoded null embedding).
    guidance: w >= 0; 0 (or labels None) runs the conditional pass only.
    interval: (lo, hi): guide only where the noise level gamma lies in [lo, hi]
      (`guided_in_interval`); elsewhere the conditional pass alone.

  Returns:
    x0_fn(x_t, gamma, self_cond) -> clipped x0 estimate [B, ...].
  """
  unguided = lambda x, gamma, self_cond: to_x0(output_fn(x, gamma, self_cond, labels), x, gamma)
  if guidance == 0 or labels is None:
    return unguided

  def guided(x, gamma, self_cond):
    double = lambda a: jnp.concatenate([a, a], axis=0)  # [B, ...] -> [2B, ...].
    null = (jnp.full_like(labels, null_label) if isinstance(null_label, int) else null_label)
    both_labels = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), labels, null)
    cond, uncond = jnp.split(output_fn(double(x), double(gamma), double(self_cond), both_labels),
                             2)
    w = weight_in_interval(guidance, gamma, interval, x.ndim)
    return to_x0((1 + w) * cond - w * uncond, x, gamma)
  return guided_in_interval(guided, unguided, interval)


def autoguided_x0_fn(model_fn: X0Fn, guide_fn: X0Fn,
                     clip: Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray],
                     weight: float, interval: tuple[float, float] = EVERYWHERE) -> X0Fn:
  """The sampler's x0_fn with autoguidance (Karras et al. 2024, "Guiding a diffusion model with
  a bad version of itself", Eq. 2 written for x0): with weight w,

      x0 = model_fn(x_t, ...) + w * (model_fn(x_t, ...) - guide_fn(x_t, ...)),

  where the guide is a weaker version of the model (here an earlier checkpoint of the same run)
  with the same conditioning; then clipped once with `clip`. Both networks see the same state
  and self-conditioning estimate (the guided estimate of the previous step).

  Args:
    model_fn, guide_fn: (x_t [B, ...], gamma [B], self_cond [B, ...]) -> UNclipped x0
      estimate [B, ...] of the model and of its guide.
    clip: (x0, x_t, gamma) -> clipped x0 estimate.
    weight: w >= 0; 0 runs the model alone.
    interval: (lo, hi): guide only where the noise level gamma lies in [lo, hi]
      (`guided_in_interval`); elsewhere the model alone.

  Returns:
    x0_fn(x_t, gamma, self_cond) -> clipped x0 estimate [B, ...].
  """
  unguided = lambda x, gamma, self_cond: clip(model_fn(x, gamma, self_cond), x, gamma)
  if weight == 0:
    return unguided

  def guided(x, gamma, self_cond):
    model = model_fn(x, gamma, self_cond)
    w = weight_in_interval(weight, gamma, interval, x.ndim)
    return clip(model + w * (model - guide_fn(x, gamma, self_cond)), x, gamma)
  return guided_in_interval(guided, unguided, interval)


def weight_in_interval(weight: float, gamma: jnp.ndarray, interval: tuple[float, float],
                       ndim: int) -> Any:
  """The guidance weight where gamma [B] (or [B, L]) lies in [lo, hi], 0 elsewhere, shaped to
  broadcast against an estimate of `ndim` dimensions; the float `weight` itself for the
  interval EVERYWHERE."""
  if tuple(interval) == EVERYWHERE:
    return weight
  w = jnp.where(_inside(gamma, interval), weight, 0.0)
  return w.reshape(w.shape + (1,) * (ndim - w.ndim))


def _inside(gamma: jnp.ndarray, interval: tuple[float, float]) -> jnp.ndarray:
  """bool, shaped as gamma: whether each noise level lies in [lo, hi] (bounds included)."""
  lo, hi = interval
  return (gamma >= lo) & (gamma <= hi)


def guided_in_interval(guided: X0Fn, unguided: X0Fn, interval: tuple[float, float]) -> X0Fn:
  """Guidance in a limited interval of noise levels (Kynkaanniemi et al. 2024, "Applying guidance
  in a limited interval improves sample and distribution quality in diffusion models", there in
  sigma; here in gamma, the signal's share of the variance: 1 clean, 0 noise): x0_fn that runs
  `guided` at the steps where some gamma lies in [lo, hi] and `unguided` (one network pass) at
  the others. `guided` weights each example by whether its own gamma lies inside
  (`weight_in_interval`); the sampler gives all examples the step's gamma (infilling's known
  positions aside, which it overwrites). The interval EVERYWHERE returns `guided` itself."""
  if tuple(interval) == EVERYWHERE:
    return guided
  return lambda x, gamma, self_cond: jax.lax.cond(
      jnp.any(_inside(gamma, interval)), guided, unguided, x, gamma, self_cond)
