"""The Glauber Generative Model's math (bit_diffusion/ggm.py) on a joint distribution small enough
to enumerate: 5 positions of 3 symbols (243 sequences, tests/enumerable_joint.py).

Oracle tests use the exact classifier computed from the joint; the trained test fits a small MLP
with the GGM loss and checks the heat-bath sampler's output against the joint.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bit_diffusion import ggm
from tests import optimized
from tests.enumerable_joint import STATES
from tests.enumerable_joint import L
from tests.enumerable_joint import V
from tests.enumerable_joint import draw
from tests.enumerable_joint import empirical
from tests.enumerable_joint import fit
from tests.enumerable_joint import joint
from tests.enumerable_joint import monte_carlo_tv
from tests.enumerable_joint import product_of_marginals
from tests.enumerable_joint import tv

NOISE = (0.5, 0.3, 0.2)  # q: not uniform, so that a missing Pi_t factor shows.


def make_process(num_sweeps: int = 2, schedule='cosine') -> ggm.GlauberProcess:
  keep = ggm.keep_probabilities(schedule, num_sweeps)
  return ggm.GlauberProcess(length=L, vocab_size=V, keep_probs=tuple(keep), noise=NOISE)


def law_of_x_t(process, p0: np.ndarray, step: int) -> np.ndarray:
  """The law of X_t: each position j independently keeps its token with its survival, else
  holds a draw from q (the kernel alpha I + (1 - alpha) 1 q^T along axis j)."""
  alpha = np.asarray(process.survival(jnp.asarray(step)), np.float64)
  p = p0
  for j in range(L):
    kernel = alpha[j] * np.eye(V) + (1 - alpha[j]) * np.asarray(NOISE)[None, :]
    p = np.moveaxis(np.tensordot(p, kernel, axes=([j], [0])), -1, j)
  return p


def step_by_step_law(process, p0: np.ndarray, step: int) -> np.ndarray:
  """The law of X_t by applying the definition of each forward step s < t (position s mod L,
  keep with Pi_s(phi), else a draw from q), independently of `survival`."""
  p = p0
  for s in range(step):
    j, keep = s % L, process.keep_probs[s // L]
    kernel = keep * np.eye(V) + (1 - keep) * np.asarray(NOISE)[None, :]
    p = np.moveaxis(np.tensordot(p, kernel, axes=([j], [0])), -1, j)
  return p


def oracle_logits_fn(process, p0: np.ndarray):
  """The Bayes classifier of the module docstring: at each position j, logit(a) =
  log P_t(x_j = a | the positions that do not hold phi) - log q(a).

  Its inputs are few (T steps x (V + 1)^L sequences, phi included), so it is a table computed
  once in float64 from the laws of X_t and looked up: the samplers' 10^5 sequences cost a gather,
  not a sum over the 243 states each."""
  inputs = np.array(list(itertools.product(range(V + 1), repeat=L)))  # [(V + 1)^L, L]
  # Per input and position: the one-hot of its token, or all ones where it holds phi.
  weights = np.where((inputs == process.phi)[..., None], 1.0,
                     np.eye(V + 1)[inputs][..., :V])  # [(V + 1)^L, L, V]
  table = np.empty((process.num_steps, len(inputs), L, V))
  axes = 'abcdefghij'[:L]
  for t in range(process.num_steps):
    p = law_of_x_t(process, p0, t)
    for j in range(L):
      factors = [weights[:, m] if m != j else np.ones((len(inputs), V)) for m in range(L)]
      # P_t(x_j = a, the other positions as in the input): [inputs, V].
      joint_j = np.einsum(f'{axes},{",".join("z" + a for a in axes)}->z{axes[j]}', p, *factors)
      table[t, :, j] = np.log(joint_j / joint_j.sum(-1, keepdims=True)) - np.log(NOISE)
  table = jnp.asarray(table, jnp.float32)
  place_values = jnp.asarray((V + 1) ** np.arange(L - 1, -1, -1), jnp.int32)

  def logits_fn(tokens, step):
    return table[step, (tokens * place_values).sum(-1)]  # [B, L, V]

  return logits_fn


def oracle_infill(process, p0: np.ndarray, known_row, mask_row, n: int) -> np.ndarray:
  """int [n, L]: n fills by the oracle's sampler of one row with known tokens (mask True)."""
  known = jnp.asarray(np.tile(known_row, (n, 1)), jnp.int32)
  mask = jnp.asarray(np.tile(mask_row, (n, 1)))
  oracle = oracle_logits_fn(process, p0)
  return np.asarray(optimized.jit(lambda rng: ggm.sample(
      oracle, process, rng, n, known=known, known_mask=mask))(jax.random.key(6)))


def test_schedule_reaches_noise_and_closed_form_matches_the_steps():
  process = make_process(num_sweeps=3)
  keep = np.asarray(process.keep_probs)
  assert keep[-1] == 0 and np.all(keep[:-1] > 0)
  np.testing.assert_allclose(np.cumprod(keep)[:2], np.cos(np.pi / 2 * np.array([1, 2]) / 3))
  p0 = joint()
  for step in range(process.num_steps + 1):
    np.testing.assert_allclose(law_of_x_t(process, p0, step), step_by_step_law(process, p0, step),
                               rtol=1e-6, atol=1e-9)
  # X_T is q^L, whatever the data.
  noise = np.einsum('a,b,c,d,e->abcde', *[np.asarray(NOISE)] * L)
  np.testing.assert_allclose(law_of_x_t(process, p0, process.num_steps), noise, atol=1e-9)
  # Round robin: step t visits t mod L; survival after sweep k.
  np.testing.assert_array_equal(process.position(jnp.arange(12)), np.arange(12) % L)
  np.testing.assert_allclose(process.survival(jnp.asarray(7)), [keep[0] * keep[1]] * 2
                             + [keep[0]] * 3, rtol=1e-6)


def test_sampled_forward_process_has_its_closed_form_law():
  process = make_process(num_sweeps=2)
  p0, n, step = joint(), 200_000, 7
  rng = jax.random.key(0)
  x0 = STATES[np.random.default_rng(0).choice(len(STATES), n, p=p0.reshape(-1))]
  by_steps = jnp.asarray(x0, jnp.int32)
  for s in range(step):
    by_steps = process.forward_step(jax.random.fold_in(rng, s), by_steps, jnp.full((n,), s))
  closed = process.corrupt(rng, jnp.asarray(x0), jnp.full((n,), step))
  law = law_of_x_t(process, p0, step)
  floor = monte_carlo_tv(law, n)
  assert tv(empirical(np.asarray(by_steps)), law) < 2 * floor + 0.005
  assert tv(empirical(np.asarray(closed)), law) < 2 * floor + 0.005


def test_conditional_formula_inverts_the_exact_classifier():
  """D computed by Bayes' rule from the classification problem's own joint (signal: (x_{-i}, a)
  from P_t with prior 1/2; noise: x_{-i} from P_t, a from q) gives back P_t(a | x_{-i})."""
  process = make_process()
  p0, log_q = joint(), np.log(NOISE)
  for step in (0, 3, 6, 9):
    p_t, i = law_of_x_t(process, p0, step), step % L
    p_t = np.moveaxis(p_t, i, -1).reshape(-1, V)  # [contexts, a]
    context = p_t.sum(-1, keepdims=True)
    signal, noise = 0.5 * p_t, 0.5 * context * np.asarray(NOISE)[None, :]
    d = signal / (signal + noise)
    logits = np.log(d) - np.log1p(-d)
    got = np.exp(ggm.conditional_log_probs(jnp.asarray(logits), jnp.asarray(log_q)))
    np.testing.assert_allclose(got, p_t / context, atol=2e-6)
    if step == 0:  # Clean data: without the Pi_t factor, or with the sign flipped, far off.
      wrong_pi = jax.nn.softmax(jnp.asarray(logits), -1)
      assert np.abs(np.asarray(wrong_pi) - p_t / context).max() > 0.05
      wrong_sign = jax.nn.softmax(jnp.asarray(-logits) + log_q, -1)
      assert np.abs(np.asarray(wrong_sign) - p_t / context).max() > 0.3


def test_classification_examples_follow_the_stated_joint():
  process, n = make_process(), 100_000
  clean = np.arange(L) % V  # X_0 = (0, 1, 2, 0, 1).
  ex = ggm.classification_examples(process, jnp.tile(jnp.asarray(clean), (n, 1)),
                                   jax.random.key(1))
  step, positions = np.asarray(ex.step), np.asarray(ex.positions[:, 0])
  np.testing.assert_array_equal(positions, step % L)
  assert set(step) == set(range(process.num_steps))
  # phi exactly at the classified position.
  assert np.all((np.asarray(ex.inputs) == V) == (np.arange(L)[None] == positions[:, None]))
  # The signal token is X_t's: clean in the first sweep (t < L: not visited yet); in the second
  # sweep visited once, so clean with probability Pi(phi) + (1 - Pi(phi)) q(clean token).
  targets = np.asarray(ex.targets[:, 0])
  early = step < L
  np.testing.assert_array_equal(targets[early], clean[positions[early]])
  keep = process.keep_probs[0]
  for i in range(L):
    late = ~early & (positions == i)
    expected = keep + (1 - keep) * NOISE[clean[i]]
    assert abs(np.mean(targets[late] == clean[i]) - expected) < 0.02


def test_oracle_classifier_minimises_the_loss():
  """The loss's examples come from the joint the identity assumes: the exact classifier has a
  lower loss than the classifiers of other joints: labels by equality with X_t's token (a noise
  draw equal to it counted as signal), or noise from the uniform distribution instead of q."""
  process, p0 = make_process(), joint()
  oracle = oracle_logits_fn(process, p0)
  n = 200_000
  tokens = jnp.asarray(STATES[np.random.default_rng(2).choice(len(STATES), n, p=p0.reshape(-1))])
  q = jnp.asarray(NOISE, jnp.float32)

  def by_equality(x, t):  # D' = P (1 + q) / (P + q) with P = q exp(oracle logit).
    d = jax.nn.sigmoid(oracle(x, t)) * (1 + q)
    return jnp.log(d) - jnp.log1p(-d)

  variants = {'oracle': oracle, 'labels by equality': by_equality,
              'uniform noise': lambda x, t: oracle(x, t) + jnp.log(q * V)}
  rng = jax.random.key(3)  # The same examples for every variant.
  losses = {name: float(ggm.loss_terms(optimized.jit(fn), process, tokens, rng).loss.mean())
            for name, fn in variants.items()}
  print(losses)
  assert losses['oracle'] < losses['labels by equality'] - 0.005, losses
  assert losses['oracle'] < losses['uniform noise'] - 0.005, losses


@pytest.mark.parametrize('num_sweeps', [1, 3])
def test_heat_bath_sampler_with_the_oracle_samples_the_joint(num_sweeps):
  process, p0, n = make_process(num_sweeps), joint(), 100_000
  oracle = oracle_logits_fn(process, p0)
  samples = optimized.jit(lambda rng: ggm.sample(oracle, process, rng, n))(jax.random.key(4))
  floor = monte_carlo_tv(p0, n)
  distance = tv(empirical(np.asarray(samples)), p0)
  print(f'{num_sweeps} sweeps, oracle: TV {distance:.4f} (Monte-Carlo floor {floor:.4f})')
  assert distance < 1.5 * floor + 0.003, (distance, floor)


def test_sampler_with_a_wrong_classifier_or_order_does_not_sample_the_joint(monkeypatch):
  """The exactness test can fail: dropping the Pi_t factor (q is not uniform), or re-drawing
  the position after i_t (round robin off by one), moves the samples far from the joint
  (seen: TV 0.25 and 0.45; 20,000 samples have a Monte-Carlo floor near 0.02)."""
  process, p0, n = make_process(), joint(), 20_000
  oracle = oracle_logits_fn(process, p0)
  no_pi = lambda x, t: oracle(x, t) - jnp.log(jnp.asarray(NOISE))
  samples = optimized.jit(lambda rng: ggm.sample(no_pi, process, rng, n))(jax.random.key(4))
  without_pi = tv(empirical(np.asarray(samples)), p0)
  positions = ggm.group_positions
  monkeypatch.setattr(ggm, 'group_positions', lambda p, step, k: positions(p, step + 1, k))
  samples = optimized.jit(lambda rng: ggm.sample(oracle, process, rng, n))(jax.random.key(4))
  off_by_one = tv(empirical(np.asarray(samples)), p0)
  print(f'TV without the Pi_t factor {without_pi:.4f}, round robin off by one {off_by_one:.4f}')
  assert without_pi > 0.05 and off_by_one > 0.05


@pytest.mark.parametrize('k', [2, 5])
def test_several_positions_per_call_is_an_approximation(k):
  """The faster deviation draws the k positions of a call independently: on this joint of
  strongly dependent positions that is far off (k = 5 = L draws every position from its
  marginal in the last call)."""
  process, p0, n = make_process(num_sweeps=2), joint(), 100_000
  oracle = oracle_logits_fn(process, p0)
  samples = optimized.jit(lambda rng: ggm.sample(oracle, process, rng, n, positions_per_call=k))(
      jax.random.key(5))
  distance = tv(empirical(np.asarray(samples)), p0)
  print(f'{k} positions per call, oracle: TV {distance:.4f}')
  assert distance > 0.1
  if k == L:
    assert distance == pytest.approx(tv(product_of_marginals(p0), p0), abs=0.01)


def test_infilling_of_a_prefix_with_one_sweep_is_exact():
  """With one sweep the reverse process is right-to-left: position t is drawn from
  P(x_t | x_{>t}), so known tokens at the end give the exact conditional of the others."""
  process, p0, n = make_process(num_sweeps=1), joint(), 100_000
  filled = oracle_infill(process, p0, [0, 0, 0, 1, 2], [False, False, False, True, True], n)
  assert np.all(filled[:, 3] == 1) and np.all(filled[:, 4] == 2)
  conditional = p0[:, :, :, 1, 2] / p0[:, :, :, 1, 2].sum()
  floor = monte_carlo_tv(conditional, n)
  distance = tv(empirical(filled[:, :3]), conditional)
  print(f'infill, known suffix, one sweep: TV {distance:.4f} (Monte-Carlo floor {floor:.4f})')
  assert distance < 1.5 * floor + 0.003


def test_infilling_holds_the_known_tokens_and_uses_them():
  """Elsewhere holding the known tokens fixed is the paper's heuristic, not the exact
  conditional (measured here); it is closer to the conditional than the unconditional law."""
  process, p0, n = make_process(num_sweeps=3), joint(), 50_000
  filled = oracle_infill(process, p0, [0, 1, 0, 0, 0], [False, True, False, False, True], n)
  assert np.all(filled[:, 1] == 1) and np.all(filled[:, 4] == 0)
  conditional = p0[:, 1, :, :, 0] / p0[:, 1, :, :, 0].sum()
  distance = tv(empirical(filled[:, [0, 2, 3]]), conditional)
  unconditional = tv(p0.sum(axis=(1, 4)), conditional)
  print(f'infill TV to the true conditional: {distance:.4f} (unconditional: {unconditional:.4f})')
  assert distance < unconditional - 0.1


def test_bad_inputs_get_one_clear_error():
  with pytest.raises(ValueError, match='never reaches noise'):
    ggm.GlauberProcess(length=L, vocab_size=V, keep_probs=(0.9, 0.5))
  with pytest.raises(ValueError, match='never reaches noise'):
    ggm.GlauberProcess(length=L, vocab_size=V, keep_probs=(0.5, 1e-3))
  process, tokens = make_process(), jnp.zeros((4, L), jnp.int32)
  wrong_vocab = lambda x, t: jnp.zeros(x.shape + (V + 1,))
  with pytest.raises(ValueError, match='Vocabulary mismatch: the network gives 4 logits'):
    ggm.loss_terms(wrong_vocab, process, tokens, jax.random.key(0))
  with pytest.raises(ValueError, match='Vocabulary mismatch'):
    ggm.sample(wrong_vocab, process, jax.random.key(0), 4)
  with pytest.raises(ValueError, match=r'known_mask has shape \(4, 4\); infilling 4 sequences'):
    ggm.sample(oracle_logits_fn(process, joint()), process, jax.random.key(0), 4,
               known=tokens, known_mask=jnp.zeros((4, 4), bool))
  with pytest.raises(ValueError, match='positions_per_call=3'):
    ggm.sample(wrong_vocab, process, jax.random.key(0), 4, positions_per_call=3)


class Classifier(nnx.Module):
  """An MLP over the one-hot sequence (phi included) and a one-hot of the step: [B, L] -> logits
  [B, L, V]."""

  def __init__(self, num_steps: int, hidden: int, rngs: nnx.Rngs):
    self.num_steps = num_steps
    self.dense_0 = nnx.Linear(L * (V + 1) + num_steps, hidden, rngs=rngs)
    self.dense_1 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, L * V, rngs=rngs)

  def __call__(self, tokens, step):
    h = jnp.concatenate([jax.nn.one_hot(tokens, V + 1).reshape(tokens.shape[0], -1),
                         jax.nn.one_hot(step, self.num_steps)], axis=-1)
    h = jax.nn.gelu(self.dense_1(jax.nn.gelu(self.dense_0(h))))
    return self.out(h).reshape(-1, L, V)


NUM_STEPS, BATCH, HIDDEN, LEARNING_RATE = 2000, 2048, 128, 6e-3


def test_trained_classifier_samples_the_joint():
  process, p0 = make_process(num_sweeps=2), joint()
  model = Classifier(process.num_steps, HIDDEN, nnx.Rngs(0))
  graphdef, params = nnx.split(model)

  def loss_fn(params, rng):
    data_rng, loss_rng = jax.random.split(rng)
    tokens = draw(p0, data_rng, BATCH)
    logits_fn = lambda x, t: nnx.merge(graphdef, params)(x, t)
    return ggm.loss_terms(logits_fn, process, tokens, loss_rng).loss.mean()

  params, losses = fit(loss_fn, params, NUM_STEPS, LEARNING_RATE, seed=7)
  logits_fn = lambda x, t: nnx.merge(graphdef, params)(x, t)
  n = 100_000
  samples = np.asarray(optimized.jit(lambda rng: ggm.sample(logits_fn, process, rng, n))(
      jax.random.key(8)))
  distance, floor = tv(empirical(samples), p0), monte_carlo_tv(p0, n)
  # Learned conditionals at the last reverse step (t = 0: X_0 is the clean data; position 0)
  # against the joint's, per context x_{-0}, weighted by the context's probability.
  contexts = STATES[:V**(L - 1)]  # x_0 = 0, the others every value; x_0 becomes phi.
  inputs = jnp.asarray(contexts).at[:, 0].set(V)
  learned = np.exp(np.asarray(ggm.conditional_log_probs(
      logits_fn(inputs, jnp.zeros(len(contexts), jnp.int32))[:, 0], jnp.log(jnp.asarray(NOISE)))))
  true = p0.reshape(V, -1).T  # [contexts, a]
  weight = true.sum(-1)
  true = true / weight[:, None]
  context_tv = 0.5 * np.abs(learned - true).sum(-1)
  weighted_tv = float((weight * context_tv).sum())
  print(f'loss {float(losses[:100].mean()):.4f} -> {float(losses[-100:].mean()):.4f}; '
        f'sample TV {distance:.4f} (Monte-Carlo floor {floor:.4f}); t=0 conditionals: weighted '
        f'TV {weighted_tv:.4f}, max over likely contexts '
        f'{context_tv[weight > 0.02].max():.4f}')
  assert distance < 0.03, (distance, floor)
  assert weighted_tv < 0.03 and context_tv[weight > 0.02].max() < 0.05
