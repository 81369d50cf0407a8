"""`train_and_evaluate`: the train loop of every task and method, robust to interruptions.

Resumes from the latest checkpoint in the workdir; batches are a pure function of the step and
keys are fold_in(seed key, step), so a resumed run repeats an uninterrupted one exactly. Writes
TensorBoard metrics, Orbax checkpoints and previews (sample grids, captions); saves and stops
cleanly on SIGTERM or a TPU maintenance event; stops at a NaN/Inf with the last good weights.
"""

import os
import signal
import threading
from typing import Any
from typing import Callable
from typing import Optional

import jax
import numpy as np
from absl import logging
from clu import parameter_overview
from flax import nnx
from jax.experimental import multihost_utils

from bit_diffusion import checkpointing
from bit_diffusion import engine as engine_lib
from bit_diffusion import generation
from bit_diffusion import methods
from bit_diffusion import metric_writer
from bit_diffusion import workdir_lock


def train_and_evaluate(config, workdir: str, method=None,
                       on_metrics: Optional[Callable[[int, dict], None]] = None
                       ) -> engine_lib.TrainState:
  """Trains `config`, resuming from the latest checkpoint in `workdir`; returns the final state.

  Writes WORKDIR/checkpoints (Orbax), TensorBoard metrics, and previews in WORKDIR/samples
  every `training.sample_every` steps and at the end. `method` defaults to the config's (built
  with its task); `on_metrics(step, scalars)` is called with every logged set of metrics.
  Holds WORKDIR/.lock while it runs (`workdir_lock`): a second training in the same workdir
  stops at once with WorkdirLockedError.
  """
  workdir = checkpointing.ensure_writable_dir(workdir)
  lock = _lock_workdir(workdir)
  try:
    return _train(config, workdir, method, on_metrics, lock)
  finally:
    lock.release()


def _lock_workdir(workdir: str) -> workdir_lock.WorkdirLock:
  """The workdir's lock, taken by process 0; every process raises if process 0 could not."""
  lock = workdir_lock.WorkdirLock(workdir, active=jax.process_index() == 0)
  error = None
  try:
    lock.acquire()
  except workdir_lock.WorkdirLockedError as e:
    error = e
  if jax.process_count() > 1:
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if failed and error is None:
      raise workdir_lock.WorkdirLockedError(
          f'Process 0 could not lock the workdir {workdir}; see its log.')
  if error is not None:
    raise error
  return lock


def _train(config, workdir: str, method, on_metrics, lock: workdir_lock.WorkdirLock
           ) -> engine_lib.TrainState:
  """The body of `train_and_evaluate`, with the workdir locked."""
  method = method or methods.create(config)
  engine_lib.check_config(config, method, jax.device_count(), jax.process_count())
  if config.training.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', os.path.join(workdir, 'jax_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)

  # Abstract shapes only, nothing compiled; a network the config cannot build (e.g. more
  # attention channels per head than a layer has) fails here, before the checkpoints folder.
  engine = engine_lib.Engine(config, method)
  guide_at = methods.guide_step(method)  # Kept, so any later sampler can be guided by it.
  manager = checkpointing.create_manager(workdir, config.training.max_checkpoints,
                                         keep_steps=(guide_at,) if guide_at else ())
  state, start_step = None, 0
  if manager.all_steps():  # The newest checkpoint that reads; broken newer ones set aside.
    state, start_step = engine.restore(manager, set_aside_broken=True)
    logging.info('Resumed from step %d in %s.', start_step, workdir)
  # Data problems (missing dataset, wrong shapes or values) surface before anything compiles.
  train_iter = method.task.train_iterator(config.training.batch_size, config.seed, start_step)
  is_chief = jax.process_index() == 0
  writer = metric_writer.create_writer(workdir, just_logging=not is_chief)
  if state is None:
    state = engine.init_state(engine_lib.seed_key(config.seed, 'init'))
    writer.write_hparams(_flat_hparams(config))
    if is_chief:
      logging.info('%s', parameter_overview.get_parameter_overview(
          nnx.to_pure_dict(engine.abstract_state.params), include_stats=False))
  logging.info('Model with %d parameters on %d devices.', engine.num_params, jax.device_count())

  num_steps = config.training.num_steps
  progress = metric_writer.ProgressReport(num_steps, writer)
  preview = Preview(config, engine, manager)

  preemption = PreemptionWatcher()
  train_metrics = None
  step = start_step
  try:
    while step < num_steps:
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = engine.global_batch(next(train_iter))
        state, step_metrics = engine.train_step(state, batch)
      step += 1
      train_metrics = step_metrics if train_metrics is None else train_metrics.merge(
          step_metrics)
      if is_chief:
        progress(step)
      is_last = step == num_steps
      preempted = preemption.reached(step)
      must_save = (step % config.training.checkpoint_every == 0 or is_last or preempted
                   or step == guide_at)

      if step % config.training.log_every == 0 or is_last or must_save:
        _check_finite(state, manager)  # Before anything is written from this state.
        lock.refresh()
      if step % config.training.log_every == 0 or is_last:
        scalars = {f'train/{k}': v for k, v in train_metrics.compute().items()}
        writer.write_scalars(step, scalars)
        if on_metrics is not None:
          on_metrics(step, scalars)
        train_metrics = None
      if must_save:
        with progress.timed('checkpoint'):
          checkpointing.save(manager, step, state, engine.signature())
      if preempted:
        logging.warning('Preempted: saved the checkpoint of step %d in %s and stopped. Run the '
                        'same command again to resume.', step, manager.directory)
        break
      sample_every = config.training.sample_every
      if (sample_every and step % sample_every == 0) or is_last:
        with progress.timed('sample'):
          preview.write(state, step, workdir, writer)
  finally:
    preemption.close()
    manager.wait_until_finished()
    train_iter.close()
    writer.close()
  return state


class Preview:
  """The training previews: `training.num_grid_samples` samples of the EMA weights, written by
  the task (a grid of images, captions of held-out images). With autoguidance, previews from the
  guide's step on are guided by its checkpoint (EMA weights), earlier ones are not."""

  def __init__(self, config, engine: engine_lib.Engine, manager):
    self.num = config.training.num_grid_samples
    self.engine = engine
    self.manager = manager
    self.key = engine_lib.seed_key(config.seed, 'preview')
    guided = methods.autoguidance(engine.method)
    self.guide_step = methods.guide_step(engine.method) if guided else 0
    self._sample_fns = {}  # Guided or not -> the jitted sampler, compiled at first use.
    self._guide = None
    self._conditions = None

  def write(self, state: engine_lib.TrainState, step: int, workdir: str, writer) -> None:
    if self.num <= 0:
      return
    task = self.engine.method.task
    guided = bool(self.guide_step) and step >= self.guide_step
    if guided not in self._sample_fns:
      overrides = {} if guided or not self.guide_step else {'autoguidance': 0.0}
      self._sample_fns[guided] = self.engine.method.make_sample_fn(
          self.engine.graphdef, self.engine.mesh, **overrides)
    if self._conditions is None:
      self._conditions = task.preview_conditions(self.num)
    conditions, references = self._conditions
    params = (state.ema_params, self._guide_params()) if guided else state.ema_params
    samples = generation.generate(
        self._sample_fns[guided], params, jax.random.fold_in(self.key, step), conditions,
        generation.device_multiple(self.engine.mesh, len(jax.tree.leaves(conditions)[0])))
    if jax.process_index() == 0:
      task.write_preview(samples, references, step, workdir, writer)

  def _guide_params(self):
    """The guide's EMA weights, read once from its checkpoint (saved at guide_step)."""
    if self._guide is None:
      self.manager.wait_until_finished()
      self._guide = generation.read_guide(
          self.manager, self.guide_step,
          lambda step: self.engine.restore(self.manager, step)[0].ema_params)
    return self._guide


def _check_finite(state: engine_lib.TrainState, manager) -> None:
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
  """The config as TensorBoard hyperparameters: {'section.key' or 'key': bool, number or str}."""
  scalar = lambda value: str(value) if isinstance(value, (tuple, list)) else value
  flat = {}
  for section, values in config.items():
    if hasattr(values, 'items'):
      for key, value in values.items():
        flat[f'{section}.{key}'] = scalar(value)
    else:
      flat[section] = scalar(values)
  return flat
