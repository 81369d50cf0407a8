"""The Glauber Generative Model method: heat-bath dynamics learned by binary classification.

Varma, Nagaraj & Shanmugam (ICLR 2025). The math (forward process, schedule, loss, sampler, the
reading of the paper) lives in `bit_diffusion/ggm.py`; this module supplies what the engine and
the generation loop need. An example of any shape is one sequence of L = prod(example_shape)
tokens over the task's `vocab_size` values (text: [L] token ids; images: [H, W, C] values in
raster order, channels fastest; captions: [L] token ids), and samples are reshaped back. A
task's 'glauber' network follows `transformer.GlauberTransformer`: `encode_condition(cond)`
once per batch, with cond the task's condition (class labels [B] of class-conditional images,
the images [B, S, S, 3] of captions; ignored by an unconditional network: text), then at every
network call `classify(tokens_in [B, L] with phi = vocab at the classified positions, time [B]
= step / T, encoded) -> logits [B, L, vocab]`.
"""

import math
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding

from bit_diffusion import distributed
from bit_diffusion import ggm as ggm_lib


class GlauberGenerativeModel:
  """GGM on the examples of `task` (example_shape, vocab_size values, its condition).

  Attributes:
    process: the forward process (`ggm.GlauberProcess`) of `config.ggm`, on sequences of
      prod(example_shape) tokens.
    metric_names: 'loss' (the binary cross-entropy, nats per classified position) and
      'accuracy' (share classified right, signal and noise weighed 1/2 each).
  """
  metric_names = ('loss', 'accuracy')

  def __init__(self, config, task):
    if 'ggm' not in config:
      raise ValueError(f"config.method='ggm' needs the config.ggm section (its process and "
                       f'sampler), which this {config.task} config lacks: start from a GGM '
                       'config: configs/text_ggm.py, configs/digits_ggm.py or '
                       'configs/shapes_captioning_ggm.py.')
    self.config = config
    self.task = task
    self.example_shape = tuple(task.example_shape)
    self.process = ggm_lib.process_from_config(config.ggm, math.prod(self.example_shape),
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
            'ggm.positions_per_call': g.positions_per_call, 'ggm.token_scale': g.token_scale}

  def create_network(self, rng: jax.Array) -> nnx.Module:
    return self.task.create_network('glauber', rng=rng)

  def logits_fn(self, graphdef: nnx.GraphDef, params: Any, cond: Any = None
                ) -> ggm_lib.LogitsFn:
    """logits_fn(tokens_in, step) of the network with `params` given the task's condition
    `cond` (labels [B], caption images, or None), float32 [B, L, vocab]. The condition is
    encoded once, here (a caption's ViT runs once per batch, not once per network call)."""
    model = nnx.merge(graphdef, params, copy=True)
    encoded = model.encode_condition(cond)
    num_steps = self.process.num_steps
    return lambda tokens_in, step: model.classify(tokens_in, step / num_steps,
                                                  encoded).astype(jnp.float32)

  def loss(self, graphdef: nnx.GraphDef, params: Any, batch: dict[str, jax.Array],
           rng: jax.Array, batch_sharding: Optional[NamedSharding] = None
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean loss, {'loss', 'accuracy'} each [B]): Algorithm 1 (`ggm.loss_terms`)."""
    del batch_sharding  # The loss keeps the batch's sharding.
    data, cond = self.task.split_batch(batch)  # [B, *example_shape]; labels, images or None.
    tokens = data.reshape(data.shape[0], -1)  # [B, L]
    terms = ggm_lib.loss_terms(self.logits_fn(graphdef, params, cond), self.process, tokens,
                               rng, self.positions_per_call)
    return jnp.mean(terms.loss), {'loss': terms.loss, 'accuracy': terms.accuracy}

  def make_sample_fn(self, graphdef: nnx.GraphDef, mesh: Optional[Mesh] = None, *,
                     infill: bool = False, **overrides) -> Callable[..., jax.Array]:
    """A jitted fn(params, rng, cond) -> int32 [B, *example_shape]: Algorithm 2 (`ggm.sample`).

    cond: the task's sampling condition: class labels int [B], caption images int [B, S, S, 3],
    or zeros [B] that only carry the batch size (an unconditional network ignores them). The
    override `positions_per_call` (default config.ggm.positions_per_call, the value trained
    with) sets the positions re-drawn per network call; other overrides (a diffusion sampler's
    steps, td) do not apply and are ignored. infill=True: cond is (cond,
    known int [B, *example_shape], known_mask bool [B, *example_shape]); the known values are
    kept and never re-drawn.
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
      if known is not None:  # [B, *example_shape] -> [B, L].
        known, known_mask = known.reshape(batch, -1), known_mask.reshape(batch, -1)
      tokens = ggm_lib.sample(self.logits_fn(graphdef, params, cond), self.process, rng,
                              batch, positions_per_call=k, known=known, known_mask=known_mask)
      return tokens.reshape((batch,) + self.example_shape)

    return distributed.jit_sampler(sample_fn, self.config.cpu, mesh)
