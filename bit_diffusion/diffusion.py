"""Gaussian diffusion on analog bits: corruption, the training loss (Algorithm 1), x0 estimates.

The math here knows no network. It calls a `denoise_fn`:

    denoise_fn(x_t, gamma, self_cond, cond, dropout_rng) -> raw network output

with x_t and self_cond float [B, ..., D] (D analog channels), gamma float [B] ([B, L] for
sequences with `position_noise_rate`), cond the conditioning with a leading batch axis (class
labels int32 [B], caption images) or None. The raw output is an x0, eps or v prediction, bit
logits ('logistic' loss) or per-value logits ('softmax' output); `Diffusion.x0_from_output`
turns any of them into an x0 estimate.
"""

import dataclasses
import fractions
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from bit_diffusion import analog_bits
from bit_diffusion import schedules

DenoiseFn = Callable[..., jnp.ndarray]
PREDICTIONS = ('x0', 'eps', 'v')
LOSSES = ('l2', 'logistic', 'cross_entropy')
OUTPUTS = ('bits', 'softmax')


def _bcast(per_example: jnp.ndarray, like: jnp.ndarray) -> jnp.ndarray:
  """[B] or [B, L] -> [B, 1, ..., 1] or [B, L, 1, ..., 1], broadcastable against `like`."""
  return per_example.reshape(per_example.shape + (1,) * (like.ndim - per_example.ndim))


def corrupt(x0: jnp.ndarray, gamma: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
  """x_t = sqrt(gamma) x0 + sqrt(1 - gamma) eps (paper Eq. 1).

  gamma [B] (one level per example) or [B, L] (one per sequence position); others [B, ...].
  """
  gamma = _bcast(gamma, x0)
  return jnp.sqrt(gamma) * x0 + jnp.sqrt(1 - gamma) * noise


@dataclasses.dataclass(frozen=True)
class LossTerms:
  """Per-example training terms, reduced in one place (`train_step`). Each float32 [B]."""
  loss: jnp.ndarray
  x0_mse: jnp.ndarray  # Squared error of the clipped x0 estimate, per analog bit.
  bit_error: jnp.ndarray  # Fraction of bits whose x0 estimate has the wrong sign.


jax.tree_util.register_dataclass(LossTerms, data_fields=['loss', 'x0_mse', 'bit_error'],
                                 meta_fields=[])


@dataclasses.dataclass(frozen=True)
class Diffusion:
  """The diffusion process on analog bits and its training objective.

  Attributes:
    codec: how integers become analog bits (and `expected_bits` for the softmax output).
    gamma_fn: the noise schedule gamma(t).
    prediction: what the network predicts: 'x0', 'eps' or 'v'.
    loss: 'l2' on the prediction, 'logistic' (sigmoid cross-entropy per bit; x0 only) or
      'cross_entropy' (softmax cross-entropy of the value under the softmax output's logits;
      the paper's loss for one-hot outputs, and CDCD's (Dieleman et al. 2022) for text).
    output: 'bits', or 'softmax' (the factorised output of the paper's uint8 (rand) model).
    self_condition_rate: fraction of each batch shard trained with self-conditioning.
    label_dropout: probability that a label is replaced by the null label during training.
    num_classes: number of labels (0: unconditional); the null label is `num_classes`.
    position_noise_rate: probability that a training example (a sequence [L, D]) gets an
      independent noise level per position instead of one for the whole sequence (beyond the
      paper). The denoiser then takes gamma [B, L] and sees clean and noisy positions side by
      side, which teaches it to read its context; sampling is unchanged.
  """
  codec: analog_bits.BitCodec
  gamma_fn: schedules.GammaFn = schedules.cosine_gamma
  prediction: str = 'x0'
  loss: str = 'l2'
  output: str = 'bits'
  self_condition_rate: float = 0.5
  label_dropout: float = 0.0
  num_classes: int = 0
  position_noise_rate: float = 0.0

  def __post_init__(self):
    if self.prediction not in PREDICTIONS:
      raise ValueError(f'Unknown prediction {self.prediction!r}; choose one of {PREDICTIONS}.')
    if self.loss not in LOSSES:
      raise ValueError(f'Unknown loss {self.loss!r}; choose one of {LOSSES}.')
    if self.output not in OUTPUTS:
      raise ValueError(f'Unknown output {self.output!r}; choose one of {OUTPUTS}.')
    if self.loss == 'logistic' and (self.prediction != 'x0' or self.output != 'bits'):
      raise ValueError("loss='logistic' predicts bit logits: it needs prediction='x0' and "
                       "output='bits'.")
    if self.loss == 'logistic' and self.codec.encoding == 'onehot':
      raise ValueError("loss='logistic' treats every channel as an independent bit; use 'l2' "
                       "with encoding='onehot'.")
    if self.loss == 'cross_entropy' and self.output != 'softmax':
      raise ValueError("loss='cross_entropy' scores the value under per-value logits: it needs "
                       "output='softmax'.")
    if self.output == 'softmax' and self.prediction != 'x0':
      raise ValueError("output='softmax' gives an x0 estimate; it needs prediction='x0'.")
    if not 0 <= self.self_condition_rate <= 1:
      raise ValueError(f'self_condition_rate must be in [0, 1], got {self.self_condition_rate}.')
    if not 0 <= self.label_dropout < 1:
      raise ValueError(f'label_dropout must be in [0, 1), got {self.label_dropout}.')
    if not 0 <= self.position_noise_rate <= 1:
      raise ValueError(f'position_noise_rate must be in [0, 1], got {self.position_noise_rate}.')

  @property
  def scale(self) -> float:
    return self.codec.scale

  def output_channels(self, data_channels: int) -> int:
    """Channels of the raw network output for data with `data_channels` values per pixel."""
    if self.output == 'softmax':
      return data_channels * self.codec.num_values
    return data_channels * self.codec.channels_per_value

  def x0_from_output(self, output: jnp.ndarray, x_t: jnp.ndarray,
                     gamma: jnp.ndarray) -> jnp.ndarray:
    """Raw network output -> x0 estimate (not clipped), float32 like x_t."""
    output = output.astype(jnp.float32)
    if self.output == 'softmax':
      return self.codec.expected_bits(output)
    if self.loss == 'logistic':  # Expected analog bit under the predicted bit probability.
      return self.scale * jnp.tanh(output / 2)
    if self.prediction == 'x0':
      return output
    gamma = _bcast(gamma, x_t)
    if self.prediction == 'eps':  # Invert Eq. 1 for x0.
      return (x_t - jnp.sqrt(1 - gamma) * output) / jnp.sqrt(gamma)
    # v = sqrt(gamma) eps - sqrt(1 - gamma) x0  (Salimans & Ho 2022).
    return jnp.sqrt(gamma) * x_t - jnp.sqrt(1 - gamma) * output

  def clipped_x0(self, output: jnp.ndarray, x_t: jnp.ndarray, gamma: jnp.ndarray) -> jnp.ndarray:
    """x0 estimate clipped to [-b, b], as used for self-conditioning and sampling."""
    return jnp.clip(self.x0_from_output(output, x_t, gamma), -self.scale, self.scale)

  def self_condition_pattern(self, batch: int) -> tuple[int, int]:
    """(k, m): the first k of every m consecutive examples get self-conditioning.

    k / m is the self-conditioning rate (as a fraction with m <= batch). The pattern depends on
    the global batch only, not on how it is sharded, so 1 and 8 devices train identically; any
    shard whose size is a multiple of m gets exactly its share of the extra pass.
    """
    return self_condition_pattern(self.self_condition_rate, batch)

  def sample_times(self, rng: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
    """Training times t ~ U[0, 1): [B] for data of `shape` [B, ...]; with position noise, [B, L]
    for sequences [B, L, D], where a share `position_noise_rate` of the examples (a coin per
    example) gets an independent time per position and the others one time for all."""
    if not self.position_noise_rate:
      return jax.random.uniform(rng, shape[:1])
    if len(shape) != 3:
      raise ValueError(f'position_noise_rate > 0 needs sequences [B, L, D], got shape {shape}.')
    rng, position_rng, coin_rng = jax.random.split(rng, 3)
    per_example = jax.random.uniform(rng, shape[:1])
    per_position = jax.random.uniform(position_rng, shape[:2])
    independent = jax.random.bernoulli(coin_rng, self.position_noise_rate, shape[:1])
    return jnp.where(independent[:, None], per_position, per_example[:, None])

  def loss_terms(self, denoise_fn: DenoiseFn, bits: jnp.ndarray, cond: Optional[jnp.ndarray],
                 rng: jax.Array) -> LossTerms:
    """Algorithm 1 of the paper, per example.

    Args:
      denoise_fn: the network, see the module docstring.
      bits: analog bits x0, float32 [B, ..., D]. With position noise, sequences [B, L, D] and
        denoise_fn takes gamma [B, L].
      cond: the conditioning, with a leading batch axis (class labels int32 [B], caption
        images [B, S, S, 3]), or None; or a pytree of such arrays (DisCo-Diff: (labels or
        None, latents float [B, m, E]), learned: gradients flow back through it). Labels, the
        integer arrays of cond, are dropped to the null label at label_dropout.
      rng: a PRNG key.

    Returns:
      LossTerms, each [B].
    """
    batch = bits.shape[0]
    t_rng, noise_rng, label_rng, sc_rng, dropout_rng = jax.random.split(rng, 5)
    t = self.sample_times(t_rng, bits.shape)
    gamma = self.gamma_fn(t)
    noise = jax.random.normal(noise_rng, bits.shape)
    x_t = corrupt(bits, gamma, noise)

    if cond is not None and self.label_dropout > 0:  # The labels: the integer leaves of cond.
      def drop_labels(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.integer):
          return leaf
        drop = jax.random.bernoulli(label_rng, self.label_dropout, leaf.shape)
        return jnp.where(drop, self.num_classes, leaf)
      cond = jax.tree.map(drop_labels, cond)

    # Self-conditioning (Sec. 3): a fixed share of the batch (as the authors' code; the paper's
    # pseudo-code flips a coin per batch) gets a stop-gradient x0 estimate from a first pass,
    # the rest is conditioned on zeros. The first pass runs only on that share.
    self_cond = jnp.zeros_like(x_t)
    k, m = self.self_condition_pattern(batch)
    if k > 0 and batch % m == 0:
      def leading(tree):  # [B, ...] -> [B / m * k, ...], the first k of every m examples.
        return jax.tree.map(
            lambda a: a.reshape(batch // m, m, *a.shape[1:])[:, :k].reshape(-1, *a.shape[1:]),
            tree)
      first_x_t, first_gamma = leading(x_t), leading(gamma)
      first_output = denoise_fn(first_x_t, first_gamma, jnp.zeros_like(first_x_t),
                                leading(cond), sc_rng)
      estimate = jax.lax.stop_gradient(self.clipped_x0(first_output, first_x_t, first_gamma))
      estimate = estimate.reshape(batch // m, k, *x_t.shape[1:])
      padding = jnp.zeros((batch // m, m - k, *x_t.shape[1:]), x_t.dtype)
      self_cond = jnp.concatenate([estimate, padding], axis=1).reshape(x_t.shape)
    elif k > 0:  # The batch is not a multiple of m: run the first pass on all, keep the share.
      first_output = denoise_fn(x_t, gamma, self_cond, cond, sc_rng)
      estimate = jax.lax.stop_gradient(self.clipped_x0(first_output, x_t, gamma))
      chosen = _bcast(jnp.arange(batch) % m < k, x_t)
      self_cond = jnp.where(chosen, estimate, 0.0)

    output = denoise_fn(x_t, gamma, self_cond, cond, dropout_rng).astype(jnp.float32)
    reduce = lambda a: jnp.mean(a.reshape(batch, -1), axis=-1)
    if self.loss == 'logistic':
      loss = reduce(optax.sigmoid_binary_cross_entropy(output, (bits > 0).astype(jnp.float32)))
    elif self.loss == 'cross_entropy':  # Per value: -log softmax(logits)[value].
      values = self.codec.decode(bits)  # [B, ..., C]
      logits = output.reshape(*values.shape, self.codec.num_values)
      loss = reduce(optax.softmax_cross_entropy_with_integer_labels(logits, values))
    else:
      if self.prediction == 'eps':
        target = noise
      elif self.prediction == 'v':
        g = _bcast(gamma, bits)
        target = jnp.sqrt(g) * noise - jnp.sqrt(1 - g) * bits
      else:
        target = bits
      prediction = output if self.output == 'bits' else self.codec.expected_bits(output)
      loss = reduce((prediction - target) ** 2)

    x0 = jax.lax.stop_gradient(self.clipped_x0(output, x_t, gamma))
    return LossTerms(loss=loss, x0_mse=reduce((x0 - bits) ** 2),
                     bit_error=reduce(((x0 > 0) != (bits > 0)).astype(jnp.float32)))


def self_condition_pattern(rate: float, batch: int) -> tuple[int, int]:
  """(k, m) with k / m = `rate` as a fraction whose denominator m <= batch (at least 1)."""
  fraction = fractions.Fraction(rate).limit_denominator(max(1, batch))
  return fraction.numerator, fraction.denominator


def diffusion_from_config(config, num_bits: int, num_classes: int) -> Diffusion:
  """The Diffusion of `config.diffusion` and `config.bits` for values of `num_bits` bits and
  `num_classes` labels (0: none). Fields only some tasks have (output, label_dropout for images,
  position_noise_rate for text) default when a config has none."""
  return Diffusion(
      codec=analog_bits.BitCodec(num_bits=num_bits, encoding=config.bits.encoding,
                                 scale=config.bits.scale,
                                 permutation_seed=config.bits.permutation_seed),
      gamma_fn=schedules.gamma_fn_from_config(config.diffusion),
      prediction=config.diffusion.prediction,
      loss=config.diffusion.loss,
      output=config.diffusion.get('output', 'bits'),
      self_condition_rate=config.diffusion.self_condition_rate,
      label_dropout=config.diffusion.get('label_dropout', 0.0),
      num_classes=num_classes,
      position_noise_rate=config.diffusion.get('position_noise_rate', 0.0))
