"""A joint distribution small enough to enumerate, shared by the exactness tests of every method
(tests/test_ggm.py, tests/test_exact_bit_diffusion.py, tests/test_exact_autoregressive.py): 5
positions of 3 symbols (243 sequences) with strong dependencies between positions, its exact
samples, the distances to it, the text task on its alphabet and the training loop.
"""

import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bit_diffusion.tasks import text as text_tasks
from tests import optimized

L, V = 5, 3
# The joint: these sequences with these probabilities (strong dependencies between positions),
# and the remaining 5% spread evenly over all 243 sequences, so that every context has mass.
TABLE = {
    (0, 0, 0, 0, 0): 0.16, (1, 1, 1, 1, 1): 0.12, (2, 2, 2, 2, 2): 0.08,
    (0, 1, 2, 0, 1): 0.12, (1, 2, 0, 1, 2): 0.09, (2, 0, 1, 2, 0): 0.07,
    (0, 0, 1, 1, 2): 0.08, (2, 1, 1, 0, 0): 0.08, (0, 2, 0, 2, 0): 0.08,
    (1, 0, 1, 0, 1): 0.07,
}
FLOOR = 1.0 - sum(TABLE.values())
STATES = np.array(list(itertools.product(range(V), repeat=L)))  # [243, L], row-major order.


def joint() -> np.ndarray:
  """float64 [3, 3, 3, 3, 3]."""
  p = np.full((V,) * L, FLOOR / V**L)
  for state, mass in TABLE.items():
    p[state] += mass
  return p


def product_of_marginals(p: np.ndarray) -> np.ndarray:
  """float64 [V] * L: the law with p's marginals and independent positions (what a model that
  ignores the dependencies learns)."""
  marginals = [p.sum(axis=tuple(m for m in range(L) if m != j)) for j in range(L)]
  return np.einsum('a,b,c,d,e->abcde', *marginals)


def draw(p: np.ndarray, rng: jax.Array, n: int) -> jax.Array:
  """int32 [n, L]: n exact samples of p ([V] * L) by inverse CDF, jittable (cheap random bits
  inside a training step)."""
  cdf = jnp.cumsum(jnp.asarray(p.reshape(-1), jnp.float32))
  index = jnp.searchsorted(cdf, jax.random.uniform(rng, (n,)) * cdf[-1])
  return jnp.asarray(STATES, jnp.int32)[jnp.minimum(index, len(STATES) - 1)]


def empirical(samples: np.ndarray) -> np.ndarray:
  """The empirical law [V] * k of samples int [n, k]."""
  counts = np.zeros((V,) * samples.shape[1])
  np.add.at(counts, tuple(samples.T), 1)
  return counts / len(samples)


def tv(p: np.ndarray, q: np.ndarray) -> float:
  return 0.5 * float(np.abs(p - q).sum())


def sample_tv(samples: np.ndarray, p: np.ndarray) -> float:
  """TV between p ([V] * k) and the empirical law of samples int [n, k], whose rows may hold ids
  outside [0, V) (2 bits spell 4 ids): their share counts as mass off p's support."""
  valid = np.all((samples >= 0) & (samples < V), axis=1)
  off_support = 1.0 - valid.mean()
  return 0.5 * (float(np.abs(empirical(samples[valid]) * valid.mean() - p).sum()) + off_support)


def monte_carlo_tv(p: np.ndarray, n: int, seed: int = 0) -> float:
  """TV between p ([V] * k) and the empirical law of n exact samples of it (the noise floor)."""
  draws = np.random.default_rng(seed).choice(p.size, n, p=p.reshape(-1))
  return tv(empirical(np.stack(np.unravel_index(draws, p.shape), axis=1)), p)


def text_task(config, task_class=text_tasks.TextTask) -> text_tasks.TextTask:
  """The text task (`tasks/text.py`, or a subclass) on this joint's alphabet: windows of
  `data.sequence_length` tokens of V ids, 2 bits each. Its corpus is a stub: the task reads only
  its vocabulary's size and bits (the data comes from `draw`)."""
  vocabulary = types.SimpleNamespace(size=V, num_bits=2)
  return task_class(config, corpus=types.SimpleNamespace(vocabulary=vocabulary))


def fit(loss_fn, params, num_steps: int, learning_rate: float, seed: int):
  """Adam with a cosine decay (to 5% of `learning_rate`) on loss_fn(params, rng) -> scalar, for
  `num_steps` steps in one jitted scan; step i gets the key fold_in(key(seed), i).

  Returns (params, losses float32 [num_steps]), computed before it returns (not dispatched
  asynchronously into the first test that reads them).
  """
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.05))

  @optimized.jit
  def train(params):
    def step(carry, i):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, jax.random.fold_in(jax.random.key(seed),
                                                                            i))
      updates, opt_state = optimizer.update(grads, opt_state)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)),
                                       jnp.arange(num_steps))
    return params, losses

  return jax.block_until_ready(train(params))
