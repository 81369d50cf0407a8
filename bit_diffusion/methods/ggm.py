"""The Glauber Generative Model method: heat-bath dynamics learned by binary classification.

Varma, Nagaraj & Shanmugam (ICLR 2025). The math (forward process, schedule, loss, sampler, the
reading of the paper) lives in `bit_diffusion/ggm.py`; this module supplies what the engine and
the generation loop need. For token sequences (text): a task's 'glauber' network follows
`transformer.GlauberTransformer`: network(tokens_in [B, L] with phi = vocab at the classified
positions, time [B] = step / T) -> logits [B, L, vocab].
"""

from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bit_diffusion import ggm as ggm_lib


class GlauberGenerativeModel:
  """GGM on the sequences of `task` (example_shape [L], vocab_size ids).

  Attributes:
    process: the forward process (`ggm.GlauberProcess`) of `config.ggm`.
    metric_names: 'loss' (the binary cross-entropy, nats per classified position) and
      'accuracy' (share classified right, signal and noise weighed 1/2 each).
  """
  metric_names = ('loss', 'accuracy')

  def __init__(self, config, task):
    if task.channels_last:
      raise ValueError(f"config.method='ggm' models token sequences; GGM on the {config.task!r} "
                       "task is not built yet. Use config.method='bit_diffusion'.")
    self.config = config
    self.task = task
    self.process = ggm_lib.process_from_config(config.ggm, task.example_shape[0],
                                               task.vocab_size)
    self.positions_per_call = config.ggm.positions_per_call

  def check(self, num_devices: int) -> None:
    """positions_per_call must divide the steps (the schedule was checked on creation)."""
    del num_devices
    ggm_lib.check(self.process, self.positions_per_call)

  def signature(self) -> dict[str, Any]:
    """The classifier's meaning depends on the process and on the positions it hides."""
    g = self.config.ggm
    return {'method': 'ggm', 'ggm.num_sweeps': g.num_sweeps, 'ggm.schedule': g.schedule,
            'ggm.positions_per_call': g.positions_per_call}

  def create_network(self, rng: jax.Array) -> nnx.Module:
    return self.task.create_network('glauber', rng=rng)

  def logits_fn(self, graphdef: nnx.GraphDef, params: Any) -> ggm_lib.LogitsFn:
    """logits_fn(tokens_in, step) of the network with `params`, float32 [B, L, vocab]."""
    model = nnx.merge(graphdef, params, copy=True)
    num_steps = self.process.num_steps
    return lambda tokens_in, step: model(tokens_in, step / num_steps).astype(jnp.float32)

  def loss(self, graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array],
           rng: jax.Array, batch_sharding: Optional[NamedSharding] = None
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean loss, {'loss', 'accuracy'} each [B]): Algorithm 1 (`ggm.loss_terms`)."""
    del batch_sharding  # The loss keeps the batch's sharding.
    tokens, _ = self.task.split_batch(batch)  # [B, L]; text has no condition.
    terms = ggm_lib.loss_terms(self.logits_fn(graphdef, params), self.process, tokens, rng,
                               self.positions_per_call)
    return jnp.mean(terms.loss), {'loss': terms.loss, 'accuracy': terms.accuracy}

  def make_sample_fn(self, graphdef: nnx.GraphDef, mesh: Optional[Mesh] = None, *,
                     infill: bool = False, **overrides) -> Callable[..., jax.Array]:
    """A jitted fn(params, rng, cond) -> token ids int32 [B, L]: Algorithm 2 (`ggm.sample`).

    cond only carries the batch size B (zeros [B]). The override `positions_per_call` (default
    config.ggm.positions_per_call, the value trained with) sets the positions re-drawn per
    network call; other overrides (a diffusion sampler's steps, td) do not apply and are
    ignored. infill=True: cond is (cond, known int [B, L], known_mask bool [B, L]); the known
    tokens are kept and never re-drawn.
    """
    k = int(overrides.get('positions_per_call', self.positions_per_call))
    ggm_lib.check(self.process, k)
    if k != self.positions_per_call:
      logging.warning('Sampling %d positions per call from a GGM trained with %d: the network '
                      'sees inputs with phi at positions it was not trained on.', k,
                      self.positions_per_call)

    def sample_fn(params, rng, cond):
      known = known_mask = None
      if infill:
        cond, known, known_mask = cond
      batch = jax.tree.leaves(cond)[0].shape[0]
      return ggm_lib.sample(self.logits_fn(graphdef, params), self.process, rng, batch,
                            positions_per_call=k, known=known, known_mask=known_mask)

    if mesh is None:
      return jax.jit(sample_fn)
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
    return jax.jit(sample_fn, in_shardings=(None, replicated, batch_sharding),
                   out_shardings=batch_sharding)
