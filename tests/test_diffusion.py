"""The training objective: corruption, x0 from every parameterisation, self-conditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_diffusion import analog_bits
from bit_diffusion import diffusion
from bit_diffusion import schedules

CODEC = analog_bits.BitCodec(3, 'binary', scale=1.0)
BITS = CODEC.encode(jnp.asarray(np.random.RandomState(0).randint(0, 8, (8, 2, 2, 1))))  # [8,2,2,3]


def _oracle(diff, bits):
  """A denoise_fn that knows x0 and returns the exact target of `diff`'s parameterisation."""
  def denoise_fn(x_t, gamma, self_cond, labels, rng):
    g = gamma.reshape(-1, 1, 1, 1)
    # Matches the examples of x_t: the self-conditioning pass sees a leading subset.
    x0 = bits[:x_t.shape[0]] if x_t.shape[0] == bits.shape[0] else _leading(diff, bits, x_t)
    eps = (x_t - jnp.sqrt(g) * x0) / jnp.sqrt(1 - g)
    if diff.loss == 'logistic':
      return 40.0 * jnp.sign(x0)
    if diff.output == 'softmax':
      values = CODEC.decode(x0)
      return (jax.nn.one_hot(values, CODEC.num_values) * 40.0).reshape(*values.shape[:-1], -1)
    return {'x0': x0, 'eps': eps, 'v': jnp.sqrt(g) * eps - jnp.sqrt(1 - g) * x0}[diff.prediction]
  return denoise_fn


def _leading(diff, bits, x_t):
  k, m = diff.self_condition_pattern(bits.shape[0])
  assert x_t.shape[0] == bits.shape[0] // m * k
  return bits.reshape(-1, m, *bits.shape[1:])[:, :k].reshape(x_t.shape)


@pytest.mark.parametrize('kwargs', [
    dict(prediction='x0'), dict(prediction='eps'), dict(prediction='v'),
    dict(loss='logistic'), dict(output='softmax'), dict(output='softmax', loss='cross_entropy'),
    dict(self_condition_rate=1.0), dict(self_condition_rate=0.0)])
def test_oracle_has_zero_loss_and_exact_x0(kwargs):
  diff = diffusion.Diffusion(codec=CODEC, **kwargs)
  terms = jax.jit(lambda rng: diff.loss_terms(_oracle(diff, BITS), BITS, None, rng))(
      jax.random.PRNGKey(0))
  assert terms.loss.shape == (8,)
  np.testing.assert_allclose(terms.loss, 0.0, atol=1e-4)
  np.testing.assert_allclose(terms.bit_error, 0.0)
  np.testing.assert_allclose(terms.x0_mse, 0.0, atol=1e-4)


@pytest.mark.parametrize('encoding', ['binary', 'permuted'])
def test_cross_entropy_scores_the_value_under_the_logits(encoding):
  """Logits that put log-odds c on value v and 0 elsewhere give -log(e^c / (e^c + 7)) when v
  is the true value, -log(1 / (e^c + 7)) otherwise (8 values), whatever the bit encoding."""
  codec = analog_bits.BitCodec(3, encoding, scale=1.0)
  values = jnp.asarray(np.random.RandomState(1).randint(0, 8, (8, 2, 2, 1)))
  bits = codec.encode(values)
  guessed = jnp.where(jnp.arange(8).reshape(8, 1, 1, 1) % 2 == 0, values, (values + 1) % 8)
  c = 2.0
  diff = diffusion.Diffusion(codec=codec, output='softmax', loss='cross_entropy',
                             self_condition_rate=0.0)
  denoise_fn = lambda x_t, gamma, sc, labels, rng: (
      c * jax.nn.one_hot(guessed, 8)).reshape(*guessed.shape[:-1], -1)
  terms = diff.loss_terms(denoise_fn, bits, None, jax.random.PRNGKey(0))
  right, wrong = -np.log(np.exp(c) / (np.exp(c) + 7)), -np.log(1 / (np.exp(c) + 7))
  np.testing.assert_allclose(terms.loss, [right, wrong] * 4, rtol=1e-5)


def test_x0_from_every_prediction_inverts_the_forward_process():
  gamma = jnp.array([0.05, 0.5, 0.95] * 2 + [0.3, 0.7])
  noise = jax.random.normal(jax.random.PRNGKey(3), BITS.shape)
  x_t = diffusion.corrupt(BITS, gamma, noise)
  g = gamma.reshape(-1, 1, 1, 1)
  for prediction, output in [('x0', BITS), ('eps', noise),
                             ('v', jnp.sqrt(g) * noise - jnp.sqrt(1 - g) * BITS)]:
    diff = diffusion.Diffusion(codec=CODEC, prediction=prediction)
    np.testing.assert_allclose(diff.x0_from_output(output, x_t, gamma), BITS, atol=1e-4)


def test_corrupt_matches_equation_one():
  gamma = jnp.linspace(0.0, 1.0, 8)
  noise = jnp.ones_like(BITS)
  x_t = diffusion.corrupt(BITS, gamma, noise)
  np.testing.assert_allclose(x_t[0], noise[0])  # gamma = 0: pure noise.
  np.testing.assert_allclose(x_t[-1], BITS[-1])  # gamma = 1: clean.
  g = 3 / 7
  np.testing.assert_allclose(x_t[3], np.sqrt(g) * BITS[3] + np.sqrt(1 - g), rtol=1e-6)


@pytest.mark.parametrize('rate,first_labels,conditioned', [
    (0.5, [0, 2, 4, 6], [1, 0, 1, 0, 1, 0, 1, 0]),
    (0.25, [0, 4], [1, 0, 0, 0, 1, 0, 0, 0]),
    (0.75, [0, 1, 2, 4, 5, 6], [1, 1, 1, 0, 1, 1, 1, 0]),
    (1 / 3, list(range(8)), [1, 0, 0, 1, 0, 0, 1, 0]),  # 1 of every 3: 8 is no multiple of 3.
])
def test_self_conditioning_pass_covers_a_fixed_share(rate, first_labels, conditioned):
  seen = []

  def recording_denoise_fn(x_t, gamma, self_cond, labels, rng):
    seen.append((x_t.shape[0], np.asarray(self_cond), labels))
    return jnp.full_like(x_t, 3.0)  # Clipped to b = 1 for the self-conditioning estimate.

  diff = diffusion.Diffusion(codec=CODEC, self_condition_rate=rate)
  diff.loss_terms(recording_denoise_fn, BITS, jnp.arange(8), jax.random.PRNGKey(0))
  (first_batch, first_sc, seen_labels), (second_batch, second_sc, _) = seen
  assert first_batch == len(first_labels) and not first_sc.any()
  np.testing.assert_array_equal(seen_labels, first_labels)
  assert second_batch == 8
  np.testing.assert_array_equal(np.abs(second_sc).reshape(8, -1).max(axis=1), conditioned)


def test_self_conditioning_estimate_gets_no_gradient():
  diff = diffusion.Diffusion(codec=CODEC, self_condition_rate=1.0)

  def loss(w_first_pass, w_second_pass):
    weights = iter([w_first_pass, w_second_pass])  # One weight per call of the network.
    denoise_fn = lambda x_t, gamma, self_cond, labels, rng: next(weights) * (x_t + self_cond)
    return jnp.mean(diff.loss_terms(denoise_fn, BITS, None, jax.random.PRNGKey(0)).loss)

  grad_first, grad_second = jax.grad(loss, argnums=(0, 1))(0.3, 0.3)
  assert float(grad_first) == 0.0  # The first pass's estimate is behind a stop-gradient...
  assert float(grad_second) != 0.0  # ...while the second pass trains.


def test_label_dropout_uses_the_null_label():
  seen = []
  diff = diffusion.Diffusion(codec=CODEC, self_condition_rate=0.0, label_dropout=0.3,
                             num_classes=10)
  labels = jnp.zeros((4000,), jnp.int32)
  bits = jnp.ones((4000, 1, 1, 3))
  diff.loss_terms(lambda x, g, sc, labels, rng: seen.append(labels) or x, bits, labels,
                  jax.random.PRNGKey(0))
  dropped = np.mean(np.asarray(seen[0]) == 10)
  assert 0.27 < dropped < 0.33
  assert set(np.unique(seen[0])) == {0, 10}


def test_position_noise_levels_and_corruption_per_position():
  """rate 0.5, linear schedule (gamma = 1 - t): half of the examples (a coin each) get one level
  per position, the rest one level for the whole sequence, and every position is corrupted at
  its own level (Eq. 1 per position)."""
  seen = {}

  def recording_denoise_fn(x_t, gamma, self_cond, labels, rng):
    seen['x_t'], seen['gamma'] = np.asarray(x_t), np.asarray(gamma)
    return x_t

  diff = diffusion.Diffusion(codec=CODEC, gamma_fn=schedules.linear_gamma,
                             self_condition_rate=0.0, position_noise_rate=0.5)
  bits = jnp.ones((4000, 16, 3))
  diff.loss_terms(recording_denoise_fn, bits, None, jax.random.PRNGKey(0))
  gamma = seen['gamma']
  assert gamma.shape == (4000, 16)
  per_position = gamma.std(axis=1) > 0
  assert abs(per_position.mean() - 0.5) < 0.03  # Binomial(4000, 0.5): sd 0.008.
  independent = gamma[per_position]
  # Independent U[0, 1) levels: mean 1/2, variance 1/12, no correlation between neighbours.
  np.testing.assert_allclose(independent.mean(), 0.5, atol=0.01)
  np.testing.assert_allclose(independent.var(), 1 / 12, atol=0.003)
  assert abs(np.corrcoef(independent[:, :-1].ravel(), independent[:, 1:].ravel())[0, 1]) < 0.02
  # The noise at each position, (x_t - sqrt(gamma) x0) / sqrt(1 - gamma), is standard normal.
  g = gamma[..., None]
  noise = (seen['x_t'] - np.sqrt(g)) / np.sqrt(1 - g)
  np.testing.assert_allclose([noise.mean(), noise.var()], [0.0, 1.0], atol=0.01)


def test_position_noise_off_keeps_one_level_per_example():
  diff = diffusion.Diffusion(codec=CODEC, self_condition_rate=0.0)
  seen = []
  diff.loss_terms(lambda x, g, sc, labels, rng: seen.append(g) or x, jnp.ones((8, 16, 3)),
                  None, jax.random.PRNGKey(0))
  assert seen[0].shape == (8,)
  with pytest.raises(ValueError, match=r'sequences \[B, L, D\]'):
    diffusion.Diffusion(codec=CODEC, position_noise_rate=0.5).loss_terms(
        lambda x, g, sc, labels, rng: x, BITS, None, jax.random.PRNGKey(0))


@pytest.mark.parametrize('kwargs,match', [
    (dict(prediction='score'), 'Unknown prediction'), (dict(loss='l1'), 'Unknown loss'),
    (dict(output='logits'), 'Unknown output'), (dict(loss='logistic', prediction='eps'), 'x0'),
    (dict(output='softmax', prediction='v'), 'x0'), (dict(self_condition_rate=1.5), 'rate'),
    (dict(loss='cross_entropy'), "output='softmax'"),
    (dict(label_dropout=1.0), 'label_dropout'),
    (dict(position_noise_rate=-0.1), 'position_noise_rate')])
def test_bad_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    diffusion.Diffusion(codec=CODEC, **kwargs)


def test_output_channels():
  assert diffusion.Diffusion(codec=analog_bits.BitCodec(8)).output_channels(3) == 24
  softmax = diffusion.Diffusion(codec=analog_bits.BitCodec(8, 'permuted'), output='softmax')
  assert softmax.output_channels(3) == 768
  assert diffusion.Diffusion(codec=analog_bits.BitCodec(4, 'onehot')).output_channels(1) == 16


def test_schedule_from_config_is_used():
  import ml_collections
  config = ml_collections.ConfigDict(dict(schedule='linear', schedule_start=0.0,
                                          schedule_end=1.0, schedule_tau=1.0))
  assert float(schedules.gamma_fn_from_config(config)(jnp.array(0.25))) == pytest.approx(0.75)
