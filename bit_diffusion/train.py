"""Training: the jitted train step over a device mesh, and `train_and_evaluate`.

One code path for one CPU, several GPUs or a TPU slice: the global batch is sharded over the
'data' axis of a `Mesh` of all devices and the train state is replicated; `jax.jit` with those
shardings inserts the gradient all-reduce. Keys are derived as fold_in(seed key, step) and batches
as a pure function of the step, so a resumed run repeats an uninterrupted one exactly.
"""

import os
import signal
import threading
from typing import Any
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from clu import metrics
from clu import parameter_overview
from clu import periodic_actions
from flax import nnx
from flax import struct
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bit_diffusion import checkpointing
from bit_diffusion import diffusion as diffusion_lib
from bit_diffusion import distributed
from bit_diffusion import input_pipeline
from bit_diffusion import models
from bit_diffusion import sampling

# Raised whenever TrainState gains or loses a field (2: first_nonfinite_step added).
TRAIN_STATE_FORMAT = 2


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


@struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  x0_mse: metrics.Average.from_output('x0_mse')
  bit_error: metrics.Average.from_output('bit_error')
  grad_norm: metrics.Average.from_output('grad_norm')
  param_norm: metrics.LastValue.from_output('param_norm')
  learning_rate: metrics.LastValue.from_output('learning_rate')


def create_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes, axis 'data'."""
  return Mesh(np.array(jax.devices()), ('data',))


# The kinds of YNNPACK fusion (XLA:CPU's kernel library) that training.cpu_ynn_fusions may name.
YNN_FUSION_KINDS = ('INDIVIDUAL_CONVOLUTION', 'INDIVIDUAL_DOT', 'DOT', 'REDUCE', 'ELTWISE')


def train_compiler_options(training_config) -> Optional[dict[str, str]]:
  """XLA compiler options of the jitted train step (None: XLA's defaults).

  On CPU, training.cpu_ynn_fusions lists what YNNPACK runs; the rest goes to XLA's own kernels
  (Eigen convolutions, generated loops). The default, 'INDIVIDUAL_DOT,REDUCE,ELTWISE' (XLA's
  default is 'INDIVIDUAL_CONVOLUTION,INDIVIDUAL_DOT,REDUCE'), trains 10-15% faster on this
  project's CPU with the same results to float32 rounding (README, Benchmarks); '' keeps XLA's
  defaults. The sampler always keeps XLA's defaults (no faster, or slower, with these).
  """
  kinds = _ynn_fusion_kinds(training_config.cpu_ynn_fusions)
  if jax.default_backend() != 'cpu' or not kinds:
    return None
  return {'xla_cpu_experimental_ynn_fusion_type':
          ','.join('LIBRARY_FUSION_TYPE_' + kind for kind in kinds)}


def _ynn_fusion_kinds(text: str) -> list[str]:
  """'INDIVIDUAL_DOT, eltwise' -> ['INDIVIDUAL_DOT', 'ELTWISE']; unknown kinds raise."""
  kinds = [kind.strip().upper() for kind in text.split(',') if kind.strip()]
  unknown = [kind for kind in kinds if kind not in YNN_FUSION_KINDS]
  if unknown:
    raise ValueError(f'training.cpu_ynn_fusions={text!r} names {unknown}; choose from '
                     f'{YNN_FUSION_KINDS}, comma-separated, or \'\' for XLA\'s defaults.')
  return kinds


def learning_rate_schedule(optimizer_config) -> optax.Schedule:
  """Linear warm-up, then constant (paper: 1e-4 for CIFAR-10, 10K warm-up steps).

  Step s (counting from 0) uses lr * min(1, (s + 1) / warmup_steps), so no step is wasted at 0.
  """
  peak, warmup = optimizer_config.learning_rate, max(1, optimizer_config.warmup_steps)
  return lambda count: peak * jnp.minimum(1.0, (count + 1) / warmup)


def create_optimizer(optimizer_config) -> optax.GradientTransformation:
  """Adam (AdamW when weight_decay > 0) after global-norm clipping."""
  schedule = learning_rate_schedule(optimizer_config)
  if optimizer_config.weight_decay > 0:
    adam = optax.adamw(schedule, b1=optimizer_config.b1, b2=optimizer_config.b2,
                       weight_decay=optimizer_config.weight_decay)
  else:
    adam = optax.adam(schedule, b1=optimizer_config.b1, b2=optimizer_config.b2)
  if optimizer_config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optimizer_config.grad_clip_norm), adam)
  return adam


def check_config(config, num_devices: int, process_count: int) -> None:
  """Errors that can be found before loading data or compiling anything."""
  batch = config.training.batch_size
  if batch % num_devices:
    raise ValueError(f'training.batch_size={batch} does not divide over {num_devices} devices; '
                     f'use a multiple of {num_devices}.')
  if batch % process_count:
    raise ValueError(f'training.batch_size={batch} does not divide over {process_count} '
                     'processes.')
  microbatch = config.training.microbatch_size
  if microbatch:
    if microbatch < 0 or batch % microbatch:
      raise ValueError(f'training.microbatch_size={microbatch} must divide '
                       f'training.batch_size={batch} (or be 0: no microbatches).')
    if microbatch % num_devices:
      raise ValueError(f'training.microbatch_size={microbatch} does not divide over '
                       f'{num_devices} devices; use a multiple of {num_devices}.')
    rate = config.diffusion.self_condition_rate
    k, m = diffusion_lib.self_condition_pattern(rate, batch)
    if k and (diffusion_lib.self_condition_pattern(rate, microbatch) != (k, m)
              or (microbatch // num_devices) % m):
      raise ValueError(
          f'training.microbatch_size={microbatch} cannot keep the self-conditioning share '
          f'{k}/{m} of diffusion.self_condition_rate={rate} on each of {num_devices} devices: '
          f'use a microbatch of a multiple of {m * num_devices} examples.')
  _ynn_fusion_kinds(config.training.cpu_ynn_fusions)
  sample_microbatch = config.sampling.microbatch_size
  if sample_microbatch < 0 or sample_microbatch % num_devices:
    raise ValueError(f'sampling.microbatch_size={sample_microbatch} must be 0 (whole batches) or '
                     f'a positive multiple of the {num_devices} devices.')
  if config.sampling.guidance and not config.diffusion.label_dropout:
    raise ValueError('sampling.guidance > 0 needs a model trained with diffusion.label_dropout '
                     '> 0 (it learns the unconditional model from dropped labels).')
  if config.diffusion.label_dropout and not config.data.class_conditional:
    raise ValueError('diffusion.label_dropout > 0 needs data.class_conditional=True.')
  for name in ('num_steps', 'log_every', 'checkpoint_every'):
    if config.training[name] < 1:
      raise ValueError(f'training.{name} must be >= 1, got {config.training[name]}.')


class Trainer:
  """Builds the model, optimizer, shardings and jitted functions of one config.

  The defaults train the image U-Net on `input_pipeline` batches. Other tasks (captioning)
  subclass it and override the task hooks: `create_model`, `encode_batch`,
  `create_train_iterator`, `write_samples` and `SIGNATURE_FIELDS`; the train loop
  (`train_and_evaluate`), checkpointing and sharding stay shared.

  Attributes:
    diffusion: the Diffusion of the config.
    graphdef: the network's graph (parameters live in TrainState).
    mesh: the device mesh; the batch is sharded over 'data'; the state is replicated, or
      sharded over 'data' too with training.param_sharding='fsdp'.
    state_sharding: a pytree of shardings like TrainState.
  """
  SIGNATURE_FIELDS = checkpointing.IMAGE_SIGNATURE_FIELDS

  def __init__(self, config, mesh: Optional[Mesh] = None):
    self.config = config
    self.mesh = mesh or create_mesh()
    self.diffusion = diffusion_lib.diffusion_from_config(config)
    self.optimizer = create_optimizer(config.optimizer)
    abstract_model = nnx.eval_shape(lambda: self.create_model(jax.random.PRNGKey(0)))
    self.graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    self.num_params = sum(x.size for x in jax.tree.leaves(abstract_params))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P('data'))
    self.abstract_state = jax.eval_shape(self._init_state, jax.random.PRNGKey(0))
    self.state_sharding = distributed.param_shardings(self.abstract_state, self.mesh,
                                                      config.training.param_sharding)
    self.train_step = jax.jit(self._train_step, in_shardings=(self.state_sharding, None),
                              out_shardings=(self.state_sharding, self.replicated),
                              donate_argnums=0,
                              compiler_options=train_compiler_options(config.training))
    self.init_state = jax.jit(self._init_state, out_shardings=self.state_sharding)

  # Task hooks: the image task's versions.

  def create_model(self, rng: jax.Array) -> nnx.Module:
    """The network: model(x_t ++ self_cond, gamma, cond, dropout_rng=...) -> raw output."""
    return models.create_model(self.config, self.diffusion, rng)

  def encode_batch(self, batch: dict[str, jax.Array]
                   ) -> tuple[jax.Array, Optional[jax.Array]]:
    """(analog bits [B, H, W, C * bits], labels [B] or None) of an image batch."""
    bits = self.diffusion.codec.encode(batch['images'])
    return bits, batch['labels'] if self.diffusion.num_classes else None

  def create_train_iterator(self, start_step: int) -> Any:
    """This process's batches (numpy dicts) from `start_step` on."""
    iterator, _ = input_pipeline.create_train_iterator(
        self.config.data, global_batch_size=self.config.training.batch_size,
        seed=self.config.seed, start_step=start_step)
    return iterator

  def write_samples(self, state: TrainState, step: int, workdir: str, writer) -> None:
    """Samples a grid with the EMA weights: WORKDIR/samples/grid_STEP.png and TensorBoard."""
    if not hasattr(self, '_grid_sample_fn'):
      self._grid_sample_fn = self.make_sample_fn()
    num = self.config.training.num_grid_samples
    if num <= 0:
      return
    labels = default_labels(num, self.diffusion.num_classes)
    images = sampling.generate(
        self._grid_sample_fn, state.ema_params,
        jax.random.fold_in(jax.random.PRNGKey(self.config.seed + 1), step), labels,
        self.device_multiple(num))
    if jax.process_index() == 0:
      grid = sampling.write_grid(os.path.join(workdir, 'samples', f'grid_{step:08d}.png'),
                                 images, sampling.display_max(self.config.data))
      writer.write_images(step, {'samples': grid[None]})

  def signature(self) -> dict[str, Any]:
    """The config fields a checkpoint of this model depends on (checked on restore), and the
    layout version of TrainState, so that checkpoints of an older layout are refused clearly."""
    return {'train_state_format': TRAIN_STATE_FORMAT,
            **checkpointing.model_signature(self.config, self.SIGNATURE_FIELDS)}

  # Shared machinery.

  def _init_state(self, rng: jax.Array) -> TrainState:
    params = nnx.state(self.create_model(rng), nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),  # EMA starts at the weights.
                      opt_state=self.optimizer.init(params),
                      first_nonfinite_step=jnp.full((), -1, jnp.int32))

  def compute_loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array
                   ) -> tuple[jax.Array, diffusion_lib.LossTerms]:
    """(mean loss, per-example LossTerms) of a batch: the diffusion loss (Algorithm 1).

    A task hook too: a task with another objective (the captioning AR baseline) overrides it.
    """
    bits, labels = self.encode_batch(batch)
    bits = jax.lax.with_sharding_constraint(bits, self.batch_sharding)
    terms = self.diffusion.loss_terms(models.make_denoise_fn(self.graphdef, params), bits,
                                      labels, rng)
    return jnp.mean(terms.loss), terms

  def _train_step(self, state: TrainState, batch: dict[str, jax.Array]
                  ) -> tuple[TrainState, TrainMetrics]:
    """One optimizer step on a global batch (see `encode_batch`)."""
    rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), state.step)
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
    step_metrics = TrainMetrics.single_from_model_output(
        loss=terms.loss, x0_mse=terms.x0_mse, bit_error=terms.bit_error, grad_norm=grad_norm,
        param_norm=optax.global_norm(params),
        learning_rate=learning_rate_schedule(self.config.optimizer)(state.step))
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

  def make_sample_fn(self, **overrides) -> Any:
    """The jitted sampler of `config.sampling`, with keyword overrides (steps, td, ...)."""
    sampling_config = dict(sampler=self.config.sampling.sampler,
                           steps=self.config.sampling.steps, td=self.config.sampling.td,
                           ddpm_variance=self.config.sampling.ddpm_variance,
                           guidance=self.config.sampling.guidance,
                           self_condition=self.config.sampling.self_condition,
                           microbatch_size=self.config.sampling.microbatch_size)
    sampling_config.update(overrides)
    data = self.config.data
    return sampling.make_sample_fn(
        self.graphdef, self.diffusion, image_shape=(data.image_size, data.image_size,
                                                    data.channels),
        mesh=self.mesh, **sampling_config)

  def device_multiple(self, wanted: int) -> int:
    """The largest batch <= wanted that splits evenly over the devices (at least one each)."""
    return max(self.mesh.size, wanted // self.mesh.size * self.mesh.size)

  def restore(self, manager, step: Optional[int] = None) -> tuple[TrainState, int]:
    abstract = checkpointing.abstract_with_shardings(self.abstract_state, self.state_sharding)
    return checkpointing.restore(manager, abstract, self.signature(), step)


def default_labels(num: int, num_classes: int, labels_spec: str = '') -> np.ndarray:
  """Labels for sampling: '' cycles 0..num_classes-1 (zeros if unconditional), or '3,3,7'."""
  if labels_spec:
    values = np.array([int(v) for v in str(labels_spec).split(',')], np.int32)
    if num_classes and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError(f'sampling.labels {labels_spec!r} must lie in [0, {num_classes}).')
    return np.resize(values, num)
  if not num_classes:
    return np.zeros(num, np.int32)
  return (np.arange(num) % num_classes).astype(np.int32)


def train_and_evaluate(config, workdir: str, trainer_class: type = Trainer) -> TrainState:
  """Trains `config`, resuming from the latest checkpoint in `workdir`; returns the final state.

  Writes WORKDIR/checkpoints (Orbax), TensorBoard metrics, and sample grids in WORKDIR/samples
  (PNG, also in TensorBoard) every `training.sample_every` steps and at the end.
  """
  workdir = checkpointing.ensure_writable_dir(workdir)
  check_config(config, jax.device_count(), jax.process_count())
  if config.training.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', os.path.join(workdir, 'jax_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)

  manager = checkpointing.create_manager(workdir, config.training.max_checkpoints)
  trainer = trainer_class(config)  # Builds abstract shapes only: nothing is compiled yet.
  start_step = manager.latest_step() or 0
  if start_step:
    checkpointing.check_signature(manager, start_step, trainer.signature())
  # Data problems (missing dataset, wrong shapes or values) surface before anything compiles.
  train_iter = trainer.create_train_iterator(start_step)
  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if start_step:
    state, _ = trainer.restore(manager, start_step)
    logging.info('Resumed from step %d in %s.', start_step, workdir)
  else:
    state = trainer.init_state(jax.random.PRNGKey(config.seed))
    writer.write_hparams(_flat_hparams(config))
    if is_chief:
      logging.info('%s', parameter_overview.get_parameter_overview(
          nnx.to_pure_dict(trainer.abstract_state.params), include_stats=False))
  logging.info('Model with %d parameters on %d devices.', trainer.num_params, jax.device_count())

  num_steps = config.training.num_steps
  report_progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  hooks = [report_progress] if is_chief else []

  preemption = PreemptionWatcher()
  train_metrics = None
  step = start_step
  try:
    while step < num_steps:
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = trainer.global_batch(next(train_iter))
        state, step_metrics = trainer.train_step(state, batch)
      step += 1
      train_metrics = step_metrics if train_metrics is None else train_metrics.merge(
          step_metrics)
      for hook in hooks:
        hook(step)
      is_last = step == num_steps
      preempted = preemption.reached(step)
      must_save = step % config.training.checkpoint_every == 0 or is_last or preempted

      if step % config.training.log_every == 0 or is_last or must_save:
        _check_finite(state, manager)  # Before anything is written from this state.
      if step % config.training.log_every == 0 or is_last:
        writer.write_scalars(step, {f'train/{k}': v for k, v in train_metrics.compute().items()})
        train_metrics = None
      if must_save:
        with report_progress.timed('checkpoint'):
          checkpointing.save(manager, step, state, trainer.signature())
      if preempted:
        logging.warning('Preempted: saved the checkpoint of step %d in %s and stopped. Run the '
                        'same command again to resume.', step, manager.directory)
        break
      sample_every = config.training.sample_every
      if (sample_every and step % sample_every == 0) or is_last:
        with report_progress.timed('sample'):
          trainer.write_samples(state, step, workdir, writer)
  finally:
    preemption.close()
    manager.wait_until_finished()
    train_iter.close()
    writer.flush()
  return state


def _check_finite(state: TrainState, manager) -> None:
  """Raises FloatingPointError if a step since the last check had a NaN/Inf loss or gradient."""
  bad_step = int(jax.device_get(state.first_nonfinite_step))
  if bad_step >= 0:
    raise FloatingPointError(
        f'The loss or the gradient became NaN or Inf at step {bad_step}. Training stopped; '
        f'the last good checkpoint (step {manager.latest_step()}) in {manager.directory} was '
        'kept and nothing after it was saved. Lower optimizer.learning_rate, enable '
        'optimizer.grad_clip_norm, or check the data; rerunning resumes from that checkpoint.')


class PreemptionWatcher:
  """Tells the train loop when to save and stop because the job is being preempted.

  One process: a SIGTERM handler sets a flag (restored on `close`). Several processes: JAX's
  preemption sync point, so that all processes agree on the step to save (it watches SIGTERM
  through the distributed runtime, as on Cloud TPU maintenance events).
  """

  def __init__(self):
    self._signalled = False
    self._previous_handler = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint at the end of this step.')
    self._signalled = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None


def _flat_hparams(config) -> dict[str, Any]:
  flat = {}
  for section, values in config.items():
    if hasattr(values, 'items'):
      for key, value in values.items():
        flat[f'{section}.{key}'] = str(value) if isinstance(value, (tuple, list)) else value
    else:
      flat[section] = value if not isinstance(value, (tuple, list)) else str(value)
  return flat

