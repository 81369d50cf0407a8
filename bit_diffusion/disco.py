"""DisCo-Diff's math (Xu, Corso, Jaakkola, Vahdat & Kreis, ICML 2024, arXiv 2407.03300).

A few discrete latents z = (z_1..z_m), each one of k codes, are inferred from the clean data by
an encoder q(z | x0) and condition the denoiser; encoder and denoiser are trained together with
the ordinary diffusion loss and no KL term (the paper's Eq. 3, the denoising loss of
D(x_t, sigma, z) with z ~ q(z | x0)). The discrete draw is relaxed with Gumbel-softmax
(Jang et al. 2017; Maddison et al. 2017) at temperature tau (1 in the paper) so that gradients
reach the encoder. Latents are replaced by a learned null embedding 10% of the time, which
gives classifier-free guidance on them. Second stage: the latents of the training data are
extracted (the paper: Gumbel-softmax at temperature 0.01; here the argmax, its deterministic
limit, by default) and an autoregressive prior p(z) = prod_i p(z_i | z_<i) is fitted to them
by maximum likelihood. Sampling draws z from the prior, then runs the diffusion sampler
conditioned on z.

Nothing here knows a network. Functions take:
  encode_fn(bits [B, ..., D]) -> logits [B, m, k];
  embed_fn(one_hot [B, m, k]) -> latents [B, m, E] (the codebook);
  denoise_fn(x_t, gamma, self_cond, cond, dropout_rng), as `diffusion.py`, where cond is
    (task condition or None, latents [B, m, E]);
  prior_logits_fn(codes int [B, m]) -> logits [B, m, k] of p(z_i | z_<i) (teacher forcing).
The optimizer of the two stages (`two_stage_optimizer`) is here too: both stages run in one
training, one checkpoint (`methods/disco.py`, docs/architecture.md).
"""

import dataclasses
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from bit_diffusion import diffusion as diffusion_lib

EXTRACTIONS = ('argmax', 'sample')
# The paper's extraction temperature (authors' code: gumbel_softmax(logits, 0.01)).
SAMPLE_TEMPERATURE = 0.01


def gumbel_softmax(rng: jax.Array, logits: jax.Array, temperature: float,
                   straight_through: bool = False) -> jax.Array:
  """A relaxed one-hot draw softmax((logits + g) / tau), g ~ Gumbel(0, 1) i.i.d.; [..., k].

  As tau -> 0 it tends to the one-hot of argmax(logits + g), an exact draw from
  softmax(logits) (the Gumbel-max trick). straight_through: the forward value is that hard
  one-hot, the gradient the relaxed one's (Bengio et al. 2013).
  """
  gumbel = jax.random.gumbel(rng, logits.shape, jnp.float32)
  soft = jax.nn.softmax((logits.astype(jnp.float32) + gumbel) / temperature, axis=-1)
  if not straight_through:
    return soft
  hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
  return soft + jax.lax.stop_gradient(hard - soft)


def extract_codes(logits: jax.Array, extraction: str = 'argmax',
                  rng: jax.Array | None = None) -> jax.Array:
  """The latents of clean data, int32 [B, m], from encoder logits [B, m, k]: 'argmax' (the
  temperature -> 0 limit without noise: deterministic) or 'sample' (Gumbel-softmax at the
  paper's 0.01, i.e. a draw from softmax(logits); needs rng)."""
  if extraction == 'argmax':
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if extraction == 'sample':
    return jnp.argmax(gumbel_softmax(rng, logits, SAMPLE_TEMPERATURE), axis=-1).astype(jnp.int32)
  raise ValueError(f'Unknown disco.extraction {extraction!r}; choose one of {EXTRACTIONS}.')


def drop_latents(rng: jax.Array, latents: jax.Array, null_embedding: jax.Array,
                 rate: float) -> jax.Array:
  """latents [B, m, E] with each example's latents replaced by null_embedding [m, E] with
  probability `rate` (one coin per example: all m latents at once), for guidance."""
  drop = jax.random.bernoulli(rng, rate, latents.shape[:1])
  return jnp.where(drop[:, None, None], null_embedding[None].astype(latents.dtype), latents)


def guided_output(conditional: jax.Array, unconditional: jax.Array, weight: float) -> jax.Array:
  """Classifier-free guidance on the latents: (1 + w) D(x; z) - w D(x; null) (Ho & Salimans
  2022; DisCo-Diff Sec. 3.3). `samplers.guided_x0_fn` applies it inside the sampler."""
  return (1 + weight) * conditional - weight * unconditional


def prior_nll(logits: jax.Array, codes: jax.Array) -> jax.Array:
  """Negative log-likelihood of codes int [B, m] under logits [B, m, k] of p(z_i | z_<i), in
  nats per latent, float32 [B]."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), codes), axis=-1)


def code_entropy(logits: jax.Array) -> jax.Array:
  """Entropy of the encoder's q(z_i | x0) in nats, averaged over the m latents, float32 [B]:
  near 0 when the encoder is sure of its codes (extraction then loses nothing)."""
  log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(-jnp.sum(jnp.exp(log_q) * log_q, axis=-1), axis=-1)


@dataclasses.dataclass(frozen=True)
class DisCoTerms:
  """Per-example training terms, each float32 [B]: the diffusion's, the prior's
  (prior_loss: nats per latent of the extracted codes) and the encoder's code entropy."""
  diffusion: diffusion_lib.LossTerms
  prior_loss: jnp.ndarray
  code_entropy: jnp.ndarray


jax.tree_util.register_dataclass(DisCoTerms, data_fields=['diffusion', 'prior_loss',
                                                          'code_entropy'], meta_fields=[])


def loss_terms(diffusion: diffusion_lib.Diffusion, *, encode_fn: Callable[..., jax.Array],
               embed_fn: Callable[..., jax.Array], null_embedding: jax.Array,
               denoise_fn: diffusion_lib.DenoiseFn,
               prior_logits_fn: Callable[..., jax.Array], bits: jax.Array, cond: Any,
               rng: jax.Array, temperature: float = 1.0, latent_dropout: float = 0.1,
               straight_through: bool = False, extraction: str = 'argmax') -> DisCoTerms:
  """Both stages' terms on one batch: the denoising loss conditioned on relaxed latents (its
  gradient reaches the denoiser, the codebook and the encoder) and the prior's likelihood of
  the extracted codes (stop-gradient: it trains the prior only).

  Args:
    diffusion: the Diffusion (its `loss_terms` is Algorithm 1 of Bit Diffusion).
    encode_fn, embed_fn, denoise_fn, prior_logits_fn: the networks (module docstring).
    null_embedding: float [m, E], the latents of "no latent".
    bits: clean analog bits float32 [B, ..., D].
    cond: the task's condition (labels) or None.
    rng: a PRNG key.
    temperature: the Gumbel-softmax temperature tau of training (the paper: 1).
    latent_dropout: the rate of examples trained with the null embedding (the paper: 0.1).
    straight_through: hard one-hot latents forward, relaxed gradients.
    extraction: how the prior's codes are read off the encoder ('argmax' or 'sample').
  """
  relax_rng, drop_rng, diffusion_rng, extract_rng = jax.random.split(rng, 4)
  logits = encode_fn(bits)  # [B, m, k]
  relaxed = gumbel_softmax(relax_rng, logits, temperature, straight_through)
  latents = drop_latents(drop_rng, embed_fn(relaxed), null_embedding, latent_dropout)
  terms = diffusion.loss_terms(denoise_fn, bits, (cond, latents), diffusion_rng)
  codes = jax.lax.stop_gradient(extract_codes(logits, extraction, extract_rng))
  return DisCoTerms(diffusion=terms, prior_loss=prior_nll(prior_logits_fn(codes), codes),
                    code_entropy=jax.lax.stop_gradient(code_entropy(logits)))


# The two stages in one optimizer.

def freeze_after(num_updates: int) -> optax.GradientTransformation:
  """Passes the first `num_updates` updates, then zeros: the parameters it follows stop at
  their values after that many steps, exactly (the moments of an Adam before it keep moving,
  unused)."""
  def init(params):
    del params
    return {'count': jnp.zeros([], jnp.int32)}

  def update(updates, state, params=None):
    del params
    keep = state['count'] < num_updates
    updates = jax.tree.map(lambda u: jnp.where(keep, u, jnp.zeros_like(u)), updates)
    return updates, {'count': state['count'] + 1}
  return optax.GradientTransformation(init, update)


def two_stage_optimizer(optimizer: optax.GradientTransformation, first_stage_steps: int,
                        is_prior: Callable[[tuple], bool]) -> optax.GradientTransformation:
  """`optimizer` run twice, on two groups of parameters with their own clipping and moments:
  the prior's, updated every step, and all others (encoder, codebook, denoiser), frozen after
  `first_stage_steps` updates. The prior's loss sees stop-gradient codes, so the first stage
  trains exactly as without it; from then on the encoder is fixed and the prior fits its codes
  (the paper's second stage), warm-started by its fit during the first stage.

  is_prior: (a parameter's key path) -> whether it belongs to the prior.
  """
  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: 'prior' if is_prior(path) else 'diffusion', params)
  return optax.multi_transform(
      {'diffusion': optax.chain(optimizer, freeze_after(first_stage_steps)),
       'prior': optimizer}, labels)
