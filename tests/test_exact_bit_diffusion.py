"""Bit Diffusion (methods/bit_diffusion.py) on the enumerable joint of tests/enumerable_joint.py:
5 positions of 3 symbols, each symbol 2 analog bits by the method's codec (10 analog bits per
sequence), the diffusion and sampler of configs/text.py (cosine schedule, x0 prediction, L2 loss,
self-conditioning, DDIM with 100 steps, td = 0), without its position noise (as the paper).

The exact x0 estimate is enumerable. Given x_t at level gamma (Eq. 1), the posterior over the
243 sequences s is p(s) N(x_t; sqrt(gamma) B_s, (1 - gamma) I), B_s the analog bits of s [10];
every B_s has the same norm, so its logits are log p(s) + sqrt(gamma) / (1 - gamma) x_t . B_s,
and E[x0 | x_t], the minimiser of the L2 loss, is the mean of the B_s under it (`exact_x0`).
The sampler is tested with it; the loss by training a denoiser whose family holds it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bit_diffusion import analog_bits
from bit_diffusion import diffusion as diffusion_lib
from bit_diffusion import samplers
from bit_diffusion.methods import bit_diffusion
from bit_diffusion.tasks import text as text_tasks
from configs import text
from tests import optimized
from tests.enumerable_joint import STATES
from tests.enumerable_joint import L
from tests.enumerable_joint import V
from tests.enumerable_joint import draw
from tests.enumerable_joint import fit
from tests.enumerable_joint import joint
from tests.enumerable_joint import monte_carlo_tv
from tests.enumerable_joint import product_of_marginals
from tests.enumerable_joint import sample_tv
from tests.enumerable_joint import text_task
from tests.enumerable_joint import tv

NUM_STEPS, BATCH, LEARNING_RATE = 2000, 1024, 3e-2


def codebook_x0(x_t, gamma, log_weights, codec: analog_bits.BitCodec) -> jax.Array:
  """E[x0 | x_t] [B, L, 2] for x_t [B, L, 2] at level gamma [B] (Eq. 1) when x0 is the analog
  bits B_s (by `codec`) of the 243 sequences s with probabilities softmax(log_weights [243])."""
  codes = codec.encode(jnp.asarray(STATES)[..., None]).reshape(len(STATES), -1)  # [243, 10]
  scale = jnp.sqrt(gamma) / (1 - gamma)
  logits = log_weights + scale[:, None] * (x_t.reshape(x_t.shape[0], -1) @ codes.T)
  return (jax.nn.softmax(logits, axis=-1) @ codes).reshape(x_t.shape)


class CodebookDenoiser(nnx.Module):
  """x0 estimate: `codebook_x0` with learned log-weights w [243] (zeros at first: the uniform
  law). Its family holds the exact estimate (w = log p + const), so that the test measures the
  method, not a network's approximation. It reads x_t and gamma; the self-conditioning
  estimate is fed in (Algorithm 1's first pass runs) and not read.

  Why not an MLP of (x_t, self-conditioning estimate, gamma embedding): a ReLU MLP of 3 layers
  of 128 trained alike (2,000 steps of 1,024) sampled at TV 0.028, 0.047, 0.038 and 0.041 over
  four seeds. Its x0 estimate stays 0.03 to 0.04 (mean absolute error per bit) off the exact one
  at high noise, where DDIM picks among the likely sequences; fitted to the exact estimate
  itself (no target noise) it is as far off after 2,000 steps (TV 0.028) and needs 6,000 (TV
  0.018). This denoiser with a learned linear term of the self-conditioning estimate in its
  logits sampled at TV 0.017, 0.031 and 0.026 over three seeds: its self-conditioned estimate
  was up to 4 times further from the exact one than its first pass (the 0.031 model sampled at
  0.018 without self-conditioning, and at 0.029 with 400 steps).
  """

  def __init__(self, codec: analog_bits.BitCodec):
    self.codec = codec  # Static (not a Param): the codes are not trained.
    self.log_weights = nnx.Param(jnp.zeros(len(STATES)))

  def encode_condition(self, cond):
    del cond
    return None

  def denoise(self, x_in, gamma, context):
    """x_in [B, L, 4] (per position x_t's 2 bits, then the self-conditioning estimate's), gamma
    [B] -> x0 estimate [B, L, 2]."""
    del context
    return codebook_x0(x_in[..., :2], gamma, self.log_weights[...], self.codec)

  def __call__(self, x_in, gamma, cond, dropout_rng=None):
    del dropout_rng
    return self.denoise(x_in, gamma, self.encode_condition(cond))


class CodebookTextTask(text_tasks.TextTask):
  """The text task whose 'denoiser' is a CodebookDenoiser with the method's codec."""

  def create_network(self, kind, *, rng, in_channels=0, out_channels=0, out_kernel_size=1):
    del rng, out_kernel_size
    assert kind == 'denoiser' and (in_channels, out_channels) == (4, 2), (kind, in_channels)
    codec = diffusion_lib.diffusion_from_config(self.config, self.num_bits, 0).codec
    return CodebookDenoiser(codec)


def make_method() -> bit_diffusion.BitDiffusion:
  """configs/text.py on windows of L tokens of 3 ids, with the paper's training (no position
  noise, bit output, L2) and the config's sampling (DDIM, 100 steps, td 0, self-conditioning)."""
  config = text.get_config()
  config.data.sequence_length = L
  config.diffusion.position_noise_rate = 0.0
  # The paper's output and loss (an x0 estimate per analog bit, L2); configs/text.py trains
  # per-value logits by cross-entropy, which this x0-valued denoiser does not give.
  config.diffusion.output = 'bits'
  config.diffusion.loss = 'l2'
  config.sampling.infill_method = 'replace'  # 'clean' needs position noise.
  return bit_diffusion.BitDiffusion(config, text_task(config, CodebookTextTask))


METHOD = make_method()


def exact_x0(p: np.ndarray):
  """x0_fn(x_t [B, L, 2], gamma [B], self_cond) -> E[x0 | x_t] [B, L, 2] under the joint p."""
  log_p = jnp.log(jnp.asarray(p.reshape(-1), jnp.float32))
  return lambda x_t, gamma, self_cond: codebook_x0(x_t, gamma, log_p, METHOD.diffusion.codec)


def sample_with(x0_fn, n: int, reverse_bits: bool = False, **settings) -> np.ndarray:
  """int [n, L]: `samplers.sample` as the method calls it (config.sampling, then `settings`)
  driven by x0_fn, decoded by the method (reverse_bits: most significant bit first)."""
  s = METHOD.config.sampling
  kwargs = dict(sampler=s.sampler, steps=s.steps, td=s.td, ddpm_variance=s.ddpm_variance,
                self_condition=METHOD.self_condition)
  kwargs.update(settings)
  x0, _ = optimized.jit(lambda rng: samplers.sample(
      x0_fn, (n, L, 2), rng, gamma_fn=METHOD.diffusion.gamma_fn, **kwargs))(jax.random.key(4))
  return np.asarray(METHOD.decode(x0[..., ::-1] if reverse_bits else x0))


@pytest.mark.parametrize('sampler', ['ddim', 'ddpm'])
def test_sampler_with_the_exact_x0_samples_the_joint(sampler):
  p0, n = joint(), 100_000
  distance = sample_tv(sample_with(exact_x0(p0), n, sampler=sampler), p0)
  floor = monte_carlo_tv(p0, n)
  print(f'{sampler}, 100 steps, exact x0: TV {distance:.4f} (Monte-Carlo floor {floor:.4f})')
  assert distance < 1.5 * floor + 0.003, (distance, floor)


def test_wrong_sampler_or_decoding_does_not_sample_the_joint():
  """The exactness test can fail: the paper's asymmetric time interval td = 1 (a heuristic, not
  exact), the network told sqrt(gamma) for gamma, the bits read most significant first, or
  the exact x0 of the product of the marginals (seen: TV 0.14, 0.11, 0.64, 0.90; 20,000 samples
  have a Monte-Carlo floor near 0.02). Telling the network the next step's level is not caught
  with 100 steps (TV 0.020), only with 10 (0.12, the exact x0's 0.05)."""
  p0, n = joint(), 20_000
  exact = exact_x0(p0)
  distances = {
      'td = 1': sample_tv(sample_with(exact, n, td=1.0), p0),
      'told sqrt(gamma)': sample_tv(sample_with(
          lambda x, gamma, sc: exact(x, jnp.sqrt(gamma), sc), n), p0),
      'bits reversed': sample_tv(sample_with(exact, n, reverse_bits=True), p0),
      'marginals only': sample_tv(sample_with(exact_x0(product_of_marginals(p0)), n), p0),
  }
  print(', '.join(f'{name}: TV {d:.4f}' for name, d in distances.items()))
  assert all(d > 0.05 for d in distances.values()), distances


def train_denoiser() -> tuple[nnx.GraphDef, nnx.State, jax.Array]:
  """(graphdef, params, losses [NUM_STEPS]) after NUM_STEPS steps of the method's loss
  (Algorithm 1, self-conditioning on half of each batch) on exact draws of the joint."""
  p0 = joint()
  graphdef, params = nnx.split(METHOD.create_network(jax.random.key(0)), nnx.Param)

  def loss_fn(params, rng):
    data_rng, loss_rng = jax.random.split(rng)
    return METHOD.loss(graphdef, params, {'tokens': draw(p0, data_rng, BATCH)}, loss_rng)[0]

  params, losses = fit(loss_fn, params, NUM_STEPS, LEARNING_RATE, seed=1)
  return graphdef, params, losses


def sample_trained(graphdef, params, n: int) -> np.ndarray:
  """int [n, L]: the method's sample function (config.sampling) with the trained params."""
  return np.asarray(optimized.call(METHOD.make_sample_fn(graphdef), params, jax.random.key(2),
                                    jnp.zeros((n,), jnp.int32)))


@pytest.fixture(scope='module')
def trained():
  return train_denoiser()


def test_trained_denoiser_samples_the_joint(trained):
  graphdef, params, losses = trained
  p0, n = joint(), 100_000
  samples = sample_trained(graphdef, params, n)
  distance, floor = sample_tv(samples, p0), monte_carlo_tv(p0, n)
  print(f'loss {float(losses[:100].mean()):.4f} -> {float(losses[-100:].mean()):.4f}; sample TV '
        f'{distance:.4f} (Monte-Carlo floor {floor:.4f}; ids >= 3 '
        f'{np.mean(np.any(samples >= V, axis=1)):.5f})')
  assert distance < 0.03, (distance, floor)


def test_trained_x0_estimate_is_the_exact_one(trained):
  """On fresh x_t of the joint at several levels, the trained x0 estimate (clipped, as the
  sampler gets it) against the exact one, per analog bit;
  an untrained denoiser (the uniform law) and the exact estimate of the product of the marginals
  are far off. The learned log-weights are the model's joint: its conditionals P(x_0 | x_-0)
  against the joint's, as test_ggm's."""
  graphdef, params, _ = trained
  p0, n, diffusion = joint(), 20_000, METHOD.diffusion
  x0 = METHOD.encode(draw(p0, jax.random.key(10), n))  # [n, L, 2]
  untrained = nnx.state(METHOD.create_network(jax.random.key(0)), nnx.Param)

  @optimized.jit
  def errors(params, t):
    gamma = jnp.full((n,), diffusion.gamma_fn(t))
    x_t = jnp.sqrt(gamma)[:, None, None] * x0 + jnp.sqrt(1 - gamma)[:, None, None] * (
        jax.random.normal(jax.random.key(11), x0.shape))
    model = nnx.merge(graphdef, params)
    estimate = diffusion.clipped_x0(model.denoise(
        jnp.concatenate([x_t, jnp.zeros_like(x_t)], -1), gamma, None), x_t, gamma)
    exact = exact_x0(p0)(x_t, gamma, None)
    mae = lambda a: jnp.mean(jnp.abs(a - exact))
    return mae(estimate), mae(exact_x0(product_of_marginals(p0))(x_t, gamma, None))

  times = (0.2, 0.4, 0.6, 0.8)
  trained_errors = np.array([errors(params, t)[0] for t in times])
  untrained_errors = np.array([errors(untrained, t)[0] for t in times])
  marginal_errors = np.array([errors(params, t)[1] for t in times])
  learned = np.asarray(jax.nn.softmax(params['log_weights'][...])).reshape(p0.shape)
  true = p0.reshape(V, -1).T  # [contexts x_-0, a]
  weight = true.sum(-1)
  context_tv = 0.5 * np.abs(learned.reshape(V, -1).T / learned.reshape(V, -1).T.sum(
      -1, keepdims=True) - true / weight[:, None]).sum(-1)
  weighted_tv = float((weight * context_tv).sum())
  print(f'x0 estimate, mean absolute error per bit at t = {times}: trained '
        f'{np.round(trained_errors, 4)}, untrained {np.round(untrained_errors, 4)}, '
        f'exact x0 of the marginals '
        f'{np.round(marginal_errors, 4)}; learned joint TV {tv(learned, p0):.4f}, P(x_0 | x_-0) '
        f'weighted TV {weighted_tv:.4f}, max over likely contexts '
        f'{context_tv[weight > 0.02].max():.4f}')
  assert trained_errors.max() < 0.01, trained_errors
  # At t = 0.2 the nearest code decides whatever the law.
  assert untrained_errors[1:].min() > 0.05 and marginal_errors[1:].min() > 0.05
  assert tv(learned, p0) < 0.03 and weighted_tv < 0.03 and context_tv[weight > 0.02].max() < 0.05


def test_training_with_a_wrong_corruption_does_not_sample_the_joint(monkeypatch):
  """The trained test can fail: Algorithm 1 with x_t = gamma x0 + sqrt(1 - gamma) eps (the
  signal's scale for its variance) trains a denoiser whose samples are far off (seen: TV 0.13
  with 10^5 samples; with x_t = sqrt(gamma) x0 + (1 - gamma) eps, 0.036)."""
  corrupt = diffusion_lib.corrupt
  monkeypatch.setattr(diffusion_lib, 'corrupt', lambda x0, gamma, noise: corrupt(
      x0, gamma, noise) + (gamma - jnp.sqrt(gamma))[:, None, None] * x0)
  graphdef, params, _ = train_denoiser()
  distance = sample_tv(sample_trained(graphdef, params, 20_000), joint())
  print(f'trained with x_t = gamma x0 + sqrt(1 - gamma) eps: TV {distance:.4f}')
  assert distance > 0.05, distance
