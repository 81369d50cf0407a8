"""The Glauber Generative Model (GGM): forward process, schedule, loss and heat-bath sampler.

Varma, Nagaraj & Shanmugam, "Glauber Generative Model: Discrete Diffusion Models via Binary
Classification" (ICLR 2025, arXiv 2405.17035). The math here knows no network. It calls

    logits_fn(tokens_in int32 [B, L], step int32 [B]) -> logits float [B, L, V]

where tokens_in is a sequence over the vocabulary {0, ..., V - 1} in which the positions being
classified hold the special symbol phi = V, and logits[b, i, a] is the logit of the classifier
D_t(a, x_{-i}) below at each position i that holds phi (other positions' outputs are unused).

Reading of the paper (this module's; the search tool held the abstract and summaries of the
paper, not its body, so where a detail had to be chosen the choice is the one that makes the
reduction exact, and it says so):

Forward process. T = num_sweeps * L steps. Step t visits position i_t = t mod L (round robin)
and draws z_t ~ Pi_t over X + {phi}: z_t = phi keeps the token ("signal survives"), z_t = a in
X replaces it by a fresh draw ("noise"). Pi_t(phi) = keep_probs[t // L] (one keep probability
per sweep) and Pi_t(a) = (1 - Pi_t(phi)) q(a) with a fixed noise distribution q over X (uniform
for text). A position's token is therefore its clean token with probability `survival` (the
product of the keep probabilities of its visits so far), else a draw from q (`corrupt`).

Schedule (choice). The survival after sweep k is alpha((k + 1) / S): 'cosine' cos(pi/2 u) or
'linear' 1 - u, so keep_probs[k] = alpha_k / alpha_{k-1} and the last sweep keeps nothing:
X_T is exactly q^L, whatever the data. A schedule whose tokens survive all T steps with
probability > 0 never reaches that noise, and the sampler's start would be wrong: an error.

Reverse process (Algorithm 2, time-dependent Glauber / heat-bath dynamics). X_{t+1} differs
from X_t only at i = i_t, which z_t re-drew independently of the rest, so given X_{t+1} the
reverse step keeps x_{-i} and draws x_i ~ P_t(x_i = a | x_{-i}), the conditional of the law P_t
of X_t. Starting from X_T ~ q^L and running t = T-1, ..., 0 samples the data exactly when the
conditionals are exact: one position, one network call per step.

Learning (Algorithm 1, binary classification). For step t and i = i_t, a labelled example is
(x_{-i}, a, y): x ~ P_t (the law of X_t); with probability 1/2 y = signal and a = x_i, else
y = noise and a ~ q independent of x. The Bayes classifier is
    D_t(a, x_{-i}) = P_t(a | x_{-i}) / (P_t(a | x_{-i}) + q(a)),
so D / (1 - D) = P_t(a | x_{-i}) / q(a) and P_t(a | x_{-i}) = q(a) D / (1 - D) / Z, i.e.
P_t(. | x_{-i}) = softmax(logit + log Pi_t(.)) (`conditional_log_probs`; the factor
1 - Pi_t(phi) cancels). The network sees x with phi at i, so one call gives D_t(a, x_{-i}) for
every a, and the binary cross-entropy trains it (`loss_terms`: both labels' terms exactly).
Choice: the label prior is 1/2 rather than Pi_t(phi) (the literal forward draw z_t). Both make
the identity exact where Pi_t(phi) is in (0, 1), but with the literal prior the last sweep
(Pi_t(phi) = 0) would have no signal examples, D = 0 there and the conditional 0/0; the
balanced prior learns every step equally well. Note that "noise" is the label of a draw from
q even when it happens to equal x_i: labelling by "a == x_i" would not give the identity.

Deviation (faster sampling, not in the paper): `positions_per_call = k` > 1 groups the steps
t = g k, ..., g k + k - 1 into one network call at step g k, with all k positions of the group
set to phi, and draws them independently, each from P(x_i | x_{-group}). Each of these
marginals is exact for a network trained with the same k (the loss masks the same groups), but
the k draws ignore the dependence between the group's positions; k = 1 is the paper.

Infilling (the paper's zero-shot infilling): positions of `known_mask` hold `known` from the
start and are never re-drawn; the network sees them clean at every step. This is a heuristic:
under the forward process they would be partly noised at step t.
"""

import dataclasses
from typing import Callable
from typing import Optional
from typing import Sequence
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]
SCHEDULES = ('cosine', 'linear')
# A schedule must leave at most this probability that a token survives all T steps.
MAX_FINAL_SURVIVAL = 1e-6


def keep_probabilities(schedule: Union[str, Sequence[float]], num_sweeps: int) -> np.ndarray:
  """Pi_t(phi) of each sweep, float64 [num_sweeps].

  schedule: 'cosine' or 'linear' (the survival after sweep k is cos(pi/2 u) or 1 - u with
  u = (k + 1) / num_sweeps; the last sweep keeps nothing), or the keep probabilities themselves.
  """
  if isinstance(schedule, str):
    if schedule not in SCHEDULES:
      raise ValueError(f'Unknown GGM schedule {schedule!r}; choose one of {SCHEDULES} or give '
                       'the keep probability of each sweep.')
    if num_sweeps < 1:
      raise ValueError(f'num_sweeps must be >= 1, got {num_sweeps}.')
    u = np.arange(1, num_sweeps + 1) / num_sweeps
    alpha = np.cos(np.pi / 2 * u) if schedule == 'cosine' else 1.0 - u
    alpha[-1] = 0.0  # cos(pi / 2) is 6e-17 in floating point.
    return alpha / np.concatenate([[1.0], alpha[:-1]])
  keep = np.asarray(schedule, np.float64)
  if keep.shape != (num_sweeps,):
    raise ValueError(f'{keep.size} keep probabilities given for {num_sweeps} sweeps.')
  return keep


@dataclasses.dataclass(frozen=True)
class GlauberProcess:
  """The forward process on sequences [L] over the vocabulary {0, ..., V - 1}.

  Attributes:
    length: L, positions per sequence.
    vocab_size: V; phi = V.
    keep_probs: Pi_t(phi) of each sweep, [num_sweeps]; step t belongs to sweep t // L.
    noise: q, the distribution of a fresh draw over the vocabulary, [V] (all > 0); None:
      uniform.
  """
  length: int
  vocab_size: int
  keep_probs: tuple[float, ...]
  noise: Optional[tuple[float, ...]] = None

  def __post_init__(self):
    keep = np.asarray(self.keep_probs, np.float64)
    if self.length < 1 or self.vocab_size < 2:
      raise ValueError(f'A GGM needs L >= 1 positions and V >= 2 tokens; got L={self.length}, '
                       f'V={self.vocab_size}.')
    if keep.ndim != 1 or not keep.size or np.any((keep < 0) | (keep > 1)):
      raise ValueError(f'keep_probs must be probabilities, one per sweep; got {self.keep_probs}.')
    if np.prod(keep) > MAX_FINAL_SURVIVAL:
      raise ValueError(
          f'The GGM schedule never reaches noise: a token survives all {keep.size} sweeps with '
          f'probability {np.prod(keep):.3g} (keep probabilities {tuple(keep)}), so X_T is not '
          'the noise the sampler starts from. The last sweep needs keep probability 0.')
    if self.noise is not None:
      q = np.asarray(self.noise, np.float64)
      if q.shape != (self.vocab_size,) or np.any(q <= 0) or abs(q.sum() - 1) > 1e-6:
        raise ValueError(f'noise must be {self.vocab_size} positive probabilities summing to '
                         f'1; got {self.noise}.')

  @property
  def num_sweeps(self) -> int:
    return len(self.keep_probs)

  @property
  def num_steps(self) -> int:
    """T = num_sweeps * L."""
    return self.num_sweeps * self.length

  @property
  def phi(self) -> int:
    """The id of the special symbol phi (the classified positions of the network's input)."""
    return self.vocab_size

  def noise_log_probs(self) -> jax.Array:
    """log q, float32 [V]."""
    if self.noise is None:
      return jnp.full((self.vocab_size,), -np.log(self.vocab_size), jnp.float32)
    return jnp.log(jnp.asarray(self.noise, jnp.float32))

  def pi(self, step: jax.Array) -> jax.Array:
    """Pi_t over X + {phi}: [..., V + 1], the last entry Pi_t(phi)."""
    keep = jnp.asarray(self.keep_probs, jnp.float32)[step // self.length][..., None]
    return jnp.concatenate([(1 - keep) * jnp.exp(self.noise_log_probs()), keep], axis=-1)

  def position(self, step: jax.Array) -> jax.Array:
    """i_t = t mod L: the position step t visits."""
    return step % self.length

  def survival(self, step: jax.Array) -> jax.Array:
    """Probability that each position of X_t still holds its clean token: float32 [..., L]."""
    step = jnp.asarray(step)[..., None]
    positions = jnp.arange(self.length)
    visits = jnp.maximum(step - positions + self.length - 1, 0) // self.length  # Steps < t.
    cumulative = jnp.concatenate([jnp.ones((1,)), jnp.cumprod(
        jnp.asarray(self.keep_probs, jnp.float32))])  # [S + 1]: after 0, 1, ... sweeps.
    return cumulative[visits]

  def draw_noise(self, rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Fresh tokens from q, int32 `shape` (by inverse CDF: one uniform per token)."""
    cdf = jnp.cumsum(jnp.exp(self.noise_log_probs()))
    tokens = jnp.searchsorted(cdf, jax.random.uniform(rng, shape) * cdf[-1], side='right')
    return jnp.minimum(tokens, self.vocab_size - 1).astype(jnp.int32)

  def corrupt(self, rng: jax.Array, tokens: jax.Array, step: jax.Array) -> jax.Array:
    """X_t given X_0 = tokens int [B, L], step t int [B] in [0, T]: each position keeps its
    token with probability `survival`, else holds a draw from q (the last replacement's)."""
    keep_rng, noise_rng = jax.random.split(rng)
    keep = jax.random.uniform(keep_rng, tokens.shape) < self.survival(step)
    return jnp.where(keep, tokens, self.draw_noise(noise_rng, tokens.shape)).astype(jnp.int32)

  def forward_step(self, rng: jax.Array, x: jax.Array, step: jax.Array) -> jax.Array:
    """X_{t+1} from X_t = x int [B, L] by the definition: z_t ~ Pi_t at i_t; phi keeps."""
    z = jax.random.categorical(rng, jnp.log(self.pi(step)))  # [B] in [0, V].
    at = jnp.arange(self.length)[None, :] == self.position(step)[:, None]
    return jnp.where(at & (z[:, None] != self.phi), z[:, None], x).astype(jnp.int32)


def process_from_config(ggm_config, length: int, vocab_size: int) -> GlauberProcess:
  """The GlauberProcess of `config.ggm` (schedule, num_sweeps) with uniform noise."""
  keep = keep_probabilities(ggm_config.schedule, ggm_config.num_sweeps)
  return GlauberProcess(length=length, vocab_size=vocab_size, keep_probs=tuple(keep.tolist()))


def conditional_log_probs(logits: jax.Array, noise_log_probs: jax.Array) -> jax.Array:
  """log P_t(a | x_{-i}) from classifier logits [..., V]: log softmax(logit + log Pi_t(a)).

  D / (1 - D) = exp(logit), and P_t(a | x_{-i}) is proportional to Pi_t(a) D / (1 - D).
  """
  return jax.nn.log_softmax(logits.astype(jnp.float32) + noise_log_probs, axis=-1)


def group_positions(process: GlauberProcess, first_step: jax.Array, k: int) -> jax.Array:
  """Positions i_t of steps first_step, ..., first_step + k - 1: int32 [..., k]."""
  return process.position(jnp.asarray(first_step)[..., None] + jnp.arange(k)).astype(jnp.int32)


def check(process: GlauberProcess, k: int, logits_shape=None, tokens_shape=None) -> None:
  """Errors of positions_per_call k, of the sequences' shape and of the network's vocabulary."""
  if not 1 <= k <= process.length or process.num_steps % k:
    raise ValueError(f'positions_per_call={k} must be in [1, L={process.length}] and divide the '
                     f'T={process.num_steps} steps.')
  if tokens_shape is not None and tuple(tokens_shape[1:]) != (process.length,):
    raise ValueError(f'Sequences of shape {tuple(tokens_shape[1:])} for a GGM of length '
                     f'{process.length}.')
  if logits_shape is not None and logits_shape[-1] != process.vocab_size:
    raise ValueError(f'Vocabulary mismatch: the network gives {logits_shape[-1]} logits per '
                     f'position, the data has {process.vocab_size} tokens.')


@dataclasses.dataclass(frozen=True)
class Examples:
  """The contexts and signal tokens of one batch of the classification problem (Algorithm 1).

  inputs: int32 [B, L], X_t with the group's positions set to phi; step: int32 [B], the first
  step t of the group (the network's time); positions: int32 [B, k], i_t, ..., i_{t+k-1};
  targets: int32 [B, k], X_t's tokens there (the signal candidates).
  """
  inputs: jax.Array
  step: jax.Array
  positions: jax.Array
  targets: jax.Array


def classification_examples(process: GlauberProcess, tokens: jax.Array, rng: jax.Array,
                            positions_per_call: int = 1) -> Examples:
  """Contexts x ~ P_t for clean sequences `tokens` int [B, L] and their signal tokens.

  t is drawn uniformly among the first steps of the groups 0, k, 2k, ..., T - k (k = 1: every
  step). X_t at the group's positions is their value before the group's steps.
  """
  k = positions_per_call
  check(process, k, tokens_shape=tokens.shape)
  batch = tokens.shape[0]
  step_rng, corrupt_rng = jax.random.split(rng)
  step = jax.random.randint(step_rng, (batch,), 0, process.num_steps // k) * k
  x_t = process.corrupt(corrupt_rng, tokens.astype(jnp.int32), step)
  positions = group_positions(process, step, k)  # [B, k]
  inputs = x_t.at[jnp.arange(batch)[:, None], positions].set(process.phi)
  return Examples(inputs, step.astype(jnp.int32), positions,
                  jnp.take_along_axis(x_t, positions, axis=1))


@dataclasses.dataclass(frozen=True)
class LossTerms:
  """Per-example training terms, each float32 [B]."""
  loss: jax.Array  # Binary cross-entropy, mean over the group's positions (nats).
  accuracy: jax.Array  # Share classified right (logit > 0: signal), signal and noise weighed 1/2.


jax.tree_util.register_dataclass(LossTerms, data_fields=['loss', 'accuracy'], meta_fields=[])


def loss_terms(logits_fn: LogitsFn, process: GlauberProcess, tokens: jax.Array, rng: jax.Array,
               positions_per_call: int = 1) -> LossTerms:
  """Algorithm 1: the binary cross-entropy of D_t on the examples of the module docstring.

  With the label prior 1/2 the expected loss at a context is
      1/2 [-log D(x_i)] + 1/2 E_{a ~ q} [-log(1 - D(a))],
  and both halves are computed exactly here from the one network call: the signal token's
  logit, and the noise term as the sum over the vocabulary weighted by q (rather than one
  sampled label and candidate per example: the same minimiser, less variance).
  """
  ex = classification_examples(process, tokens, rng, positions_per_call)
  logits = logits_fn(ex.inputs, ex.step)  # [B, L, V]
  check(process, positions_per_call, logits_shape=logits.shape)
  logits = jnp.take_along_axis(logits, ex.positions[..., None], axis=1).astype(jnp.float32)
  signal = jnp.take_along_axis(logits, ex.targets[..., None], axis=2)[..., 0]  # [B, k]
  q = jnp.exp(process.noise_log_probs())
  signal_loss = jax.nn.softplus(-signal)  # -log D
  noise_loss = jnp.sum(q * jax.nn.softplus(logits), axis=-1)  # E_q[-log(1 - D)]
  loss = 0.5 * (signal_loss + noise_loss).mean(axis=1)
  accuracy = 0.5 * ((signal > 0) + jnp.sum(q * (logits < 0), axis=-1)).mean(axis=1)
  return LossTerms(loss=loss, accuracy=accuracy)


def sample(logits_fn: LogitsFn, process: GlauberProcess, rng: jax.Array, batch: int, *,
           positions_per_call: int = 1, known: Optional[jax.Array] = None,
           known_mask: Optional[jax.Array] = None) -> jax.Array:
  """Algorithm 2: heat-bath dynamics from X_T ~ q^L down to X_0; int32 [batch, L].

  One network call per step (positions_per_call=1, the paper) or per group of k steps (the
  deviation of the module docstring), inside `jax.lax.fori_loop`. known, known_mask: int and
  bool [batch, L]; the known tokens are kept from the start and never re-drawn.
  """
  k = positions_per_call
  check(process, k)
  length = process.length
  if (known is None) != (known_mask is None):
    raise ValueError('Infilling needs both `known` and `known_mask`.')
  if known is not None:
    for name, array in (('known', known), ('known_mask', known_mask)):
      if tuple(array.shape) != (batch, length):
        raise ValueError(f'{name} has shape {tuple(array.shape)}; infilling {batch} sequences '
                         f'of length {length} needs ({batch}, {length}).')
  noise_log_probs = process.noise_log_probs()
  init_rng, loop_rng = jax.random.split(rng)
  x = process.draw_noise(init_rng, (batch, length))
  fixed = jnp.zeros((batch, length), bool)
  if known is not None:
    fixed = known_mask.astype(bool)
    x = jnp.where(fixed, known.astype(jnp.int32), x)
  num_calls = process.num_steps // k

  def body(n, x):
    step = (num_calls - 1 - n) * k  # Groups from the last (t = T - k) down to t = 0.
    positions = group_positions(process, step, k)  # [k]
    hidden = (jnp.arange(length)[None, :, None] == positions).any(-1) & ~fixed  # [B, L]
    logits = logits_fn(jnp.where(hidden, process.phi, x), jnp.full((batch,), step, jnp.int32))
    check(process, k, logits_shape=logits.shape)
    log_probs = conditional_log_probs(logits[:, positions], noise_log_probs)  # [B, k, V]
    draw = jax.random.categorical(jax.random.fold_in(loop_rng, n), log_probs).astype(jnp.int32)
    draw = jnp.where(fixed[:, positions], x[:, positions], draw)
    return x.at[:, positions].set(draw)

  return jax.lax.fori_loop(0, num_calls, body, x)
