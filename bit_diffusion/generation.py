"""Generating from a trained model: restore only the weights, and one generation loop for every
task and method, gathered across processes.

Sampling needs the network, its weights and the mesh, not the optimizer or the jitted train
step: `load` builds the method's network as shapes, restores the EMA (or online) weights of the
latest checkpoint into them, and returns them with the mesh. `generate` runs a method's jitted
sample function over any number of conditions in padded batches.
"""

import dataclasses
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from bit_diffusion import checkpointing
from bit_diffusion import distributed
from bit_diffusion import engine
from bit_diffusion import methods


@dataclasses.dataclass
class LoadedModel:
  """A method's network and restored weights, ready to sample.

  Attributes:
    method: the method (with its task as `method.task`).
    graphdef: the network's graph.
    params: the restored weights (EMA or online), laid out over `mesh`.
    mesh: the device mesh.
    step: the checkpoint's step.
    guide_params: with sampling.autoguidance > 0, the guide's weights (the checkpoint of
      `method.guide_step()`), which `make_sample_fn` passes beside `params`; else None.
  """
  method: Any
  graphdef: nnx.GraphDef
  params: Any
  mesh: Mesh
  step: int
  guide_params: Any = None

  @property
  def task(self):
    return self.method.task

  def make_sample_fn(self, **overrides) -> Callable[..., jax.Array]:
    """The method's jitted fn(params, rng, cond) -> samples, sharded over the mesh. With
    autoguidance the guide's weights go in beside `params` (the method's fn takes the pair)."""
    sample_fn = self.method.make_sample_fn(self.graphdef, self.mesh, **overrides)
    autoguidance = methods.autoguidance(self.method, overrides)
    if not autoguidance:
      return sample_fn
    if self.guide_params is None:
      raise ValueError(f'autoguidance={autoguidance} needs the guide\'s weights, which '
                       '`load` reads when the config sets sampling.autoguidance > 0 and '
                       'sampling.guide_fraction.')
    return lambda params, rng, cond: sample_fn((params, self.guide_params), rng, cond)

  def batch_size(self, wanted: int) -> int:
    return device_multiple(self.mesh, wanted)


def load(config, workdir: str, use_ema: bool = True, method=None) -> LoadedModel:
  """The newest readable checkpoint's weights in `workdir` (signature checked), without the
  optimizer.

  Only the weights are read (a partial restore): sampling and scoring need neither the
  optimizer state nor the other train-state fields. A newer checkpoint that cannot be read is
  reported in one log line and skipped, and left where it is (`checkpointing`). A method with
  `check_restored(step)` may refuse the checkpoint it gets (DisCo-Diff: one saved before its
  latent prior was fitted). `method` defaults to the config's.
  """
  method = method or methods.create(config)
  mesh = engine.create_mesh()
  graphdef, abstract_params = engine.abstract_network(method)
  manager = checkpointing.create_manager(workdir, config.training.max_checkpoints)
  name = 'ema_params' if use_ema else 'params'
  shardings = distributed.param_shardings(abstract_params, mesh, config.training.param_sharding)
  target = {name: checkpointing.abstract_with_shardings(abstract_params, shardings)}

  def read(step):
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target)))).state[name]
  signature = engine.checkpoint_signature(config, method)
  params, step = checkpointing.restore_newest_intact(manager, read, signature)
  check_restored = getattr(method, 'check_restored', None)  # Optional: e.g. an unfitted prior.
  if check_restored is not None:
    check_restored(step)
  guide_params = None
  if methods.autoguidance(method):
    guide_params = read_guide(  # Signature checked; unreadable: a one-line CheckpointError.
        manager, method.guide_step(),
        lambda step: checkpointing.restore_newest_intact(manager, read, signature, step)[0])
  return LoadedModel(method=method, graphdef=graphdef, params=params, mesh=mesh, step=step,
                     guide_params=guide_params)


def read_guide(manager: ocp.CheckpointManager, guide_step: int,
               read: Callable[[int], Any]) -> Any:
  """Autoguidance's guide: `read(guide_step)`, or an error that says how to get it."""
  steps = sorted(manager.all_steps())
  if guide_step not in steps:
    raise ValueError(
        f'sampling.autoguidance needs the guide, the checkpoint of step {guide_step} '
        f'(sampling.guide_fraction of training.num_steps), which {manager.directory} lacks (it '
        f'has steps {steps}). Training keeps it when it runs with the same guide_fraction > 0 '
        'and num_steps; set guide_fraction to land on one of those steps (step / num_steps), '
        'or sample with --config.sampling.autoguidance=0.')
  return read(guide_step)


def device_multiple(mesh: Mesh, wanted: int) -> int:
  """The largest batch <= wanted that splits evenly over the devices (at least one each)."""
  return max(mesh.size, wanted // mesh.size * mesh.size)


def generate(sample_fn: Callable[..., jax.Array], params: Any, rng: jax.Array,
             conditions: Any, batch_size: int) -> np.ndarray:
  """Samples one output per row of `conditions`, in batches of `batch_size`; numpy [N, ...].

  conditions: a pytree of arrays with a leading axis N (class labels [N], caption images
  [N, S, S, 3]; zeros [N] for an unconditional model, which only set the count). Batch i uses
  the key fold_in(rng, i * batch_size). The last batch is padded with zeros to `batch_size`, so
  one compiled function serves every batch. With several processes every process passes the
  same conditions and gets all N samples (each process computes its rows; they are gathered).
  """
  num = len(jax.tree.leaves(conditions)[0])
  outputs = []
  for start in range(0, num, batch_size):
    def padded(a):
      chunk = np.asarray(a[start:start + batch_size])
      pad = np.zeros((batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)
      return jnp.asarray(np.concatenate([chunk, pad]))
    samples = sample_fn(params, jax.random.fold_in(rng, start), jax.tree.map(padded, conditions))
    if jax.process_count() > 1:  # Each process holds only its rows: gather them everywhere.
      samples = multihost_utils.process_allgather(samples, tiled=True)
    outputs.append(np.asarray(jax.device_get(samples))[:min(batch_size, num - start)])
  return np.concatenate(outputs, axis=0)


def setting_name(config, steps: Optional[int] = None, td: Optional[float] = None) -> str:
  """How samples are drawn, for output names and score rows: 'ddim100_td1' for Bit Diffusion
  (steps and td default to config.sampling's; guidance not included), 'temperature1' for the
  autoregressive baseline, 'ggm_k1' for the Glauber Generative Model (k: positions re-drawn per
  network call)."""
  if config.method == 'autoregressive':
    return f'temperature{config.sampling.temperature:g}'
  if config.method == 'ggm':
    return f'ggm_k{config.ggm.positions_per_call}'
  s = config.sampling
  steps = s.steps if steps is None else steps
  td = s.td if td is None else td
  return f'{s.sampler}{steps}_td{td:g}'
