"""The engine: train state, optimizer, EMA, shardings, the jitted train step and its NaN guard.

It knows no method and no data. A method (bit_diffusion/methods/) supplies its network, its loss
with its own metric names and its signature; everything else here is shared. One code path for
one CPU, several GPUs or a TPU slice: the global batch is sharded over the 'data' axis of a
`Mesh` of all devices and the train state is replicated (or split, for FSDP); `jax.jit` with
those shardings inserts the gradient all-reduce. The train loop is `train_loop.py`.
"""

from typing import Any
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics
from flax import nnx
from flax import struct
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bit_diffusion import checkpointing
from bit_diffusion import cpu
from bit_diffusion import distributed

# Raised whenever TrainState or the networks' parameter layout change (2: first_nonfinite_step
# added; 3: engine/method split, attention heads from model.head_dim, 1x1 softmax output conv).
TRAIN_STATE_FORMAT = 3

# Independent random streams derived from config.seed (the data order has its own numpy seed).
KEY_PURPOSES = ('init', 'train', 'preview', 'sample', 'eval_loss', 'eval_samples', 'infill')


@struct.dataclass
class TrainState:
  """Everything a checkpoint holds. params/ema_params: nnx.State of the network's Params."""
  step: jax.Array  # int32 [], the number of completed steps.
  params: Any
  ema_params: Any
  opt_state: Any
  # int32 []: the first step whose loss or gradient was NaN/Inf, or -1. From that step on the
  # weights are frozen at their last finite values; the host stops at the next check.
  first_nonfinite_step: jax.Array


def seed_key(seed: int, purpose: str) -> jax.Array:
  """The PRNG key of one of KEY_PURPOSES: fold_in(PRNGKey(seed), index of the purpose).

  Separate streams, so that the key of the k-th parameter initialiser is never step k's
  training key.
  """
  if purpose not in KEY_PURPOSES:
    raise ValueError(f'Unknown key purpose {purpose!r}; one of {KEY_PURPOSES}.')
  return jax.random.fold_in(jax.random.PRNGKey(seed), KEY_PURPOSES.index(purpose))


def create_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes, axis 'data'."""
  return Mesh(np.array(jax.devices()), ('data',))


def learning_rate_schedule(optimizer_config, num_steps: int) -> optax.Schedule:
  """Linear warm-up, then constant (paper: 1e-4 for CIFAR-10, 10K warm-up steps) or cosine.

  Step s (counting from 0) uses lr * min(1, (s + 1) / warmup_steps), so no step is wasted at 0.
  With optimizer.decay='cosine' that is multiplied by optax's cosine decay from 1 at the end of
  the warm-up to 0 at step `num_steps` (training.num_steps), for short runs such as the demo.
  """
  peak, warmup = optimizer_config.learning_rate, max(1, optimizer_config.warmup_steps)
  warmed_up = lambda count: peak * jnp.minimum(1.0, (count + 1) / warmup)
  if optimizer_config.decay == 'constant':
    return warmed_up
  decay = optax.cosine_decay_schedule(1.0, decay_steps=max(1, num_steps - warmup))
  return lambda count: warmed_up(count) * decay(jnp.maximum(0, count - warmup))


def create_optimizer(optimizer_config, num_steps: int) -> optax.GradientTransformation:
  """Adam (AdamW when weight_decay > 0) after global-norm clipping."""
  schedule = learning_rate_schedule(optimizer_config, num_steps)
  if optimizer_config.weight_decay > 0:
    adam = optax.adamw(schedule, b1=optimizer_config.b1, b2=optimizer_config.b2,
                       weight_decay=optimizer_config.weight_decay)
  else:
    adam = optax.adam(schedule, b1=optimizer_config.b1, b2=optimizer_config.b2)
  if optimizer_config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optimizer_config.grad_clip_norm), adam)
  return adam


def check_config(config, method, num_devices: int, process_count: int) -> None:
  """Errors that can be found before loading data or compiling anything."""
  batch = config.training.batch_size
  if batch % num_devices:
    raise ValueError(f'training.batch_size={batch} does not divide over {num_devices} devices; '
                     f'use a multiple of {num_devices}.')
  if batch % process_count:
    raise ValueError(f'training.batch_size={batch} does not divide over {process_count} '
                     'processes.')
  microbatch = config.training.microbatch_size
  if microbatch and (microbatch < 0 or batch % microbatch):
    raise ValueError(f'training.microbatch_size={microbatch} must divide '
                     f'training.batch_size={batch} (or be 0: no microbatches).')
  if microbatch % num_devices:
    raise ValueError(f'training.microbatch_size={microbatch} does not divide over '
                     f'{num_devices} devices; use a multiple of {num_devices}.')
  cpu.ynn_fusion_kinds(config.cpu.ynn_fusions)
  if config.optimizer.decay not in ('constant', 'cosine'):
    raise ValueError(f"optimizer.decay={config.optimizer.decay!r}: expected 'constant' or "
                     "'cosine'.")
  for name in ('num_steps', 'log_every', 'checkpoint_every'):
    if config.training[name] < 1:
      raise ValueError(f'training.{name} must be >= 1, got {config.training[name]}.')
  method.check(num_devices)


def abstract_network(method) -> tuple[nnx.GraphDef, Any]:
  """(graphdef, abstract params) of the method's network, built as shapes only."""
  abstract_model = nnx.eval_shape(lambda: method.create_network(jax.random.PRNGKey(0)))
  return nnx.split(abstract_model, nnx.Param)


def checkpoint_signature(config, method) -> dict[str, Any]:
  """What a checkpoint's parameters depend on (checked on restore): the TrainState layout
  version, the method's and the task's fields."""
  task = method.task
  return {'train_state_format': TRAIN_STATE_FORMAT, **method.signature(), **task.signature(),
          **checkpointing.model_signature(config, task.SIGNATURE_FIELDS)}


def metrics_collection(metric_names: tuple[str, ...]) -> type[metrics.Collection]:
  """The CLU collection of a method's per-example metrics (averaged) and the engine's own."""
  return metrics.Collection.create(
      **{name: metrics.Average.from_output(name) for name in metric_names},
      grad_norm=metrics.Average.from_output('grad_norm'),
      param_norm=metrics.LastValue.from_output('param_norm'),
      learning_rate=metrics.LastValue.from_output('learning_rate'))


class Engine:
  """The compiled training machinery of one config and method.

  Attributes:
    method: the method (which holds its task).
    graphdef: the network's graph (parameters live in TrainState).
    mesh: the device mesh; the batch is sharded over 'data'; the state is replicated, or
      sharded over 'data' too with training.param_sharding='fsdp'.
    state_sharding: a pytree of shardings like TrainState.
    train_step: jitted (state, global batch) -> (state, metrics); the state is donated.
  """

  def __init__(self, config, method, mesh: Optional[Mesh] = None):
    self.config = config
    self.method = method
    self.mesh = mesh or create_mesh()
    self.optimizer = create_optimizer(config.optimizer, config.training.num_steps)
    wrap_optimizer = getattr(method, 'wrap_optimizer', None)  # Optional: groups, stages.
    if wrap_optimizer is not None:
      self.optimizer = wrap_optimizer(self.optimizer)
    self.metrics_class = metrics_collection(method.metric_names)
    self.graphdef, abstract_params = abstract_network(method)
    self.num_params = sum(x.size for x in jax.tree.leaves(abstract_params))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P('data'))
    # From the abstract parameters: tracing the network's constructor again costs ~0.5 s.
    self.abstract_state = jax.eval_shape(self._state_from_params, abstract_params)
    self.state_sharding = distributed.param_shardings(self.abstract_state, self.mesh,
                                                      config.training.param_sharding)
    self.train_step = jax.jit(self._train_step, in_shardings=(self.state_sharding, None),
                              out_shardings=(self.state_sharding, self.replicated),
                              donate_argnums=0,
                              compiler_options=cpu.compiler_options(config.cpu))
    self._jitted_init = jax.jit(self._init_state, out_shardings=self.state_sharding,
                                compiler_options=cpu.init_compiler_options())

  def signature(self) -> dict[str, Any]:
    return checkpoint_signature(self.config, self.method)

  def init_state(self, rng: jax.Array) -> TrainState:
    """A new TrainState: random parameters (and the task's pretrained parts), EMA = params."""
    state = self._jitted_init(rng)
    params = self.method.task.initial_params(state.params)
    if params is state.params:
      return state
    params = jax.device_put(params, self.state_sharding.params)
    return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))

  def _init_state(self, rng: jax.Array) -> TrainState:
    return self._state_from_params(nnx.state(self.method.create_network(rng), nnx.Param))

  def _state_from_params(self, params: Any) -> TrainState:
    """The TrainState at step 0 around `params`."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),  # EMA starts at the weights.
                      opt_state=self.optimizer.init(params),
                      first_nonfinite_step=jnp.full((), -1, jnp.int32))

  def compute_loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean loss, per-example metrics) of a batch: the method's loss."""
    return self.method.loss(self.graphdef, params, batch, rng, self.batch_sharding)

  def _train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, Any]:
    """One optimizer step on a global batch."""
    rng = jax.random.fold_in(seed_key(self.config.seed, 'train'), state.step)
    (loss, terms), grads = self._loss_and_grads(state.params, batch, rng)
    grad_norm = optax.global_norm(grads)
    # A NaN/Inf step leaves the weights as they were and records the step for the host. The
    # update runs inside a `lax.cond`, so a finite step (the usual case) costs no extra pass over
    # the state, unlike a `where` between the new and the old state.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply_update(grads, state):
      updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ema_params = optax.incremental_update(params, state.ema_params,
                                            1.0 - self.config.optimizer.ema_decay)
      return params, ema_params, opt_state

    def keep_state(grads, state):
      del grads
      return state.params, state.ema_params, state.opt_state

    params, ema_params, opt_state = jax.lax.cond(finite, apply_update, keep_state, grads, state)
    first_nonfinite_step = jnp.where(finite | (state.first_nonfinite_step >= 0),
                                     state.first_nonfinite_step, state.step + 1)
    new_state = TrainState(step=state.step + 1, params=params, ema_params=ema_params,
                           opt_state=opt_state, first_nonfinite_step=first_nonfinite_step)
    step_metrics = self.metrics_class.single_from_model_output(
        **terms, grad_norm=grad_norm, param_norm=optax.global_norm(params),
        learning_rate=learning_rate_schedule(
            self.config.optimizer, self.config.training.num_steps)(state.step))
    return new_state, step_metrics

  def _loss_and_grads(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array
                      ) -> tuple[tuple[jax.Array, Any], Any]:
    """((mean loss, per-example terms), gradients) of a global batch, by microbatches if set.

    With training.microbatch_size = N, microbatch i holds the i-th block of N / D examples of
    each of the D devices' shards (so every device works on every microbatch), runs
    `compute_loss` with the key fold_in(rng, i), and the mean of the microbatch gradients is
    the gradient of the batch mean. The per-example terms come back in batch order.
    """
    value_and_grad = jax.value_and_grad(self.compute_loss, has_aux=True)
    microbatch = self.config.training.microbatch_size
    batch_size = self.config.training.batch_size
    if not microbatch or microbatch == batch_size:
      return value_and_grad(params, batch, rng)
    shards = self.mesh.shape['data']
    ranges = distributed.microbatch_ranges(batch_size, microbatch, shards)
    grad_sum, losses, all_terms = None, [], []
    for index, (start, stop) in enumerate(ranges):  # Unrolled: XLA:CPU runs a scan far slower.
      micro = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
          distributed.microbatch_rows(x, start, stop, shards), self.batch_sharding), batch)
      (loss, terms), grads = value_and_grad(params, micro, jax.random.fold_in(rng, index))
      grad_sum = grads if grad_sum is None else jax.tree.map(jnp.add, grad_sum, grads)
      losses.append(loss)
      all_terms.append(terms)
    grads = jax.tree.map(lambda g: g / len(ranges), grad_sum)
    terms = jax.tree.map(lambda *t: distributed.join_microbatch_rows(list(t), shards), *all_terms)
    return (jnp.mean(jnp.stack(losses)), terms), grads

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded over the 'data' axis."""
    return {key: jax.make_array_from_process_local_data(self.batch_sharding, value)
            for key, value in local_batch.items()}

  def restore(self, manager, step: Optional[int] = None,
              set_aside_broken: bool = False) -> tuple[TrainState, int]:
    """(state, step) of checkpoint `step` (default: the newest that reads), signature checked;
    see `checkpointing.restore_newest_intact`."""
    abstract = checkpointing.abstract_with_shardings(self.abstract_state, self.state_sharding)
    return checkpointing.restore(manager, abstract, self.signature(), step, set_aside_broken)
