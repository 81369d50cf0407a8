"""The autoregressive baseline: a causal Transformer over token ids, teacher-forced cross-entropy,
greedy or temperature sampling from a key/value cache.

For sequence tasks (captions, text). The network protocol a task's 'autoregressive' network
follows (`transformer.AutoregressiveTransformer`): `encode_condition(cond) -> context`,
`logits(tokens_in, context)` with tokens_in the sequence shifted right behind `start_id` and
causal self-attention, so position i sees tokens < i only; and for decoding `init_cache(batch)`
and `logits_step(token_in, context, cache, index) -> (logits, cache)`.
"""

from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding

from bit_diffusion import distributed


class Autoregressive:
  """Next-token prediction on the sequences of `task` (example_shape [L], vocab_size ids).

  Attributes:
    metric_names: 'loss' (cross-entropy per scored token, in nats) and 'token_error' (the
      teacher-forced rate of wrong argmax tokens).
  """
  metric_names = ('loss', 'token_error')

  def __init__(self, config, task):
    if task.channels_last:
      raise ValueError(f"config.method='autoregressive' models token sequences; the "
                       f"{config.task!r} task has none. Use config.method='bit_diffusion'.")
    self.config = config
    self.task = task

  def check(self, num_devices: int) -> None:
    """Nothing beyond the engine's checks."""
    del num_devices

  def signature(self) -> dict[str, Any]:
    return {'method': 'autoregressive'}

  def create_network(self, rng: jax.Array) -> nnx.Module:
    return self.task.create_network('autoregressive', rng=rng)

  def loss(self, graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array],
           rng: jax.Array, batch_sharding: Optional[NamedSharding] = None
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Teacher-forced cross-entropy over the positions of `task.loss_mask` (all when None).

    Returns (mean loss, {'loss', 'token_error'} each [B]).
    """
    del rng, batch_sharding  # No noise, no dropout.
    tokens, cond = self.task.split_batch(batch)  # [B, L]
    mask = self.task.loss_mask(tokens)
    mask = jnp.ones(tokens.shape, bool) if mask is None else mask
    count = jnp.maximum(mask.sum(axis=1), 1)
    model = nnx.merge(graphdef, params, copy=True)
    logits = model.logits(shift_right(tokens, model.start_id),
                          model.encode_condition(cond)).astype(jnp.float32)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)  # [B, L]
    loss = jnp.sum(cross_entropy * mask, axis=1) / count
    errors = jnp.sum((jnp.argmax(logits, -1) != tokens) * mask, axis=1) / count
    return jnp.mean(loss), {'loss': loss, 'token_error': errors}

  def make_sample_fn(self, graphdef: nnx.GraphDef, mesh: Optional[Mesh] = None, *,
                     infill: bool = False, **overrides) -> Callable[..., jax.Array]:
    """A jitted fn(params, rng, cond) -> token ids int32 [B, L].

    `sampling.temperature` (or the override `temperature`): 0 decodes greedily (argmax; the
    captioning default), T > 0 draws each token from softmax(logits / T) (1: ancestral sampling
    of the model's distribution, for text). Other overrides (a diffusion sampler's steps, td)
    do not apply and are ignored. Decodes one position per step from cached keys and values
    (`logits_step`): L single-position network passes.

    infill=True: cond is (cond, known int [B, L], known_mask bool [B, L]); known tokens are kept
    and the others decoded from the left context only. Filling decodes greedily unless
    `temperature` is given: the most likely token is the one most often right.
    """
    length = self.task.example_shape[0]
    default_temperature = 0.0 if infill else self.config.sampling.temperature
    temperature = float(overrides.get('temperature', default_temperature))
    if temperature < 0:
      raise ValueError(f'sampling.temperature must be >= 0 (0: greedy); got {temperature}.')

    def sample_fn(params, rng, cond):
      known = None
      if infill:
        cond, *known = cond
      model = nnx.merge(graphdef, params, copy=True)
      batch = jax.tree.leaves(cond)[0].shape[0]
      return decode_tokens(model, model.encode_condition(cond), rng, batch, length, temperature,
                           known)

    return distributed.jit_sampler(sample_fn, self.config.cpu, mesh)


def decode_tokens(model: nnx.Module, context: Any, rng: jax.Array, batch: int, length: int,
                  temperature: float, known: Optional[tuple[jax.Array, jax.Array]] = None
                  ) -> jax.Array:
  """Tokens int32 [batch, length] decoded left to right from an autoregressive network's
  cache (`init_cache`, `logits_step`): each from softmax(logits / temperature), or the argmax
  at temperature 0. known: (tokens [B, L], mask bool [B, L]): masked positions keep their
  token. Position i draws with the key fold_in(rng, i)."""
  def body(i, carry):
    tokens, token_in, cache = carry
    logits, cache = model.logits_step(token_in, context, cache, i)
    logits = logits.astype(jnp.float32)
    if temperature:
      token = jax.random.categorical(jax.random.fold_in(rng, i), logits / temperature)
    else:
      token = jnp.argmax(logits, axis=-1)
    token = token.astype(jnp.int32)
    if known is not None:
      token = jnp.where(known[1][:, i], known[0][:, i].astype(jnp.int32), token)
    return tokens.at[:, i].set(token), token, cache

  start = jnp.full((batch,), model.start_id, jnp.int32)
  carry = (jnp.zeros((batch, length), jnp.int32), start, model.init_cache(batch))
  return jax.lax.fori_loop(0, length, body, carry)[0]


def shift_right(tokens: jax.Array, start_id: int) -> jax.Array:
  """[B, L] -> [B, L]: start_id, then tokens[:, :-1] (the decoder's teacher-forced input)."""
  return jnp.concatenate([jnp.full_like(tokens[:, :1], start_id), tokens[:, :-1]], axis=1)
