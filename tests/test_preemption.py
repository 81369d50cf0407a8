"""Killed, preempted and diverging runs: resume exactly, save on SIGTERM, stop on NaN."""

import glob
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bit_diffusion import checkpointing
from bit_diffusion import engine
from bit_diffusion import methods
from bit_diffusion import train_loop
from bit_diffusion.tasks import images
from configs import tiny
from tests import subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  """The tiny digits config on the one-stage U-Net (the cheapest compile and trace: these tests
  check kills, resumes and locks, not the network), then `overrides`."""
  return tiny.tiny_unet(tiny.tiny_digits(**overrides))


def _start(workdir, log_path, **overrides):
  """Starts main.py on `_config(**overrides)` in a subprocess; its log goes to log_path."""
  command = [sys.executable, 'main.py', f'--workdir={workdir}',
             *tiny.tiny_digits_flags(**tiny.TINY_UNET, **overrides)]
  log = open(log_path, 'a')
  return subprocess.Popen(command, cwd=REPO, env=subprocesses.env(), stdout=log,
                          stderr=subprocess.STDOUT)


class LoggedSteps:
  """The highest step whose metrics a run has logged so far (0 if none), read incrementally:
  the tests poll it every few milliseconds, and rereading the whole log each time would take
  CPU from the training they watch."""

  def __init__(self, log_path):
    self._log_path = log_path
    self._offset = 0
    self._partial_line = b''
    self._highest = 0

  def __call__(self) -> int:
    if os.path.getsize(self._log_path) > self._offset:
      with open(self._log_path, 'rb') as f:
        f.seek(self._offset)
        text = self._partial_line + f.read()
      self._offset += len(text) - len(self._partial_line)
      complete, _, self._partial_line = text.rpartition(b'\n')
      steps = re.findall(rb'\] \[(\d+)\] train/', complete)
      self._highest = max([self._highest, *(int(s) for s in steps)])
    return self._highest


def _wait_for(condition, timeout, what):
  deadline = time.time() + timeout
  while not condition():
    if time.time() > deadline:
      raise TimeoutError(f'Timed out waiting for {what}.')
    time.sleep(0.002)


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


KILL_RUN = {'training.num_steps': 40, 'training.checkpoint_every': 4, 'training.log_every': 1,
            'training.max_checkpoints': 20}


def test_sigkill_at_random_points_then_resume_equals_straight_run(tmp_path):
  straight = train_loop.train_and_evaluate(_config(**KILL_RUN), str(tmp_path / 'straight'))
  workdir, log_path = str(tmp_path / 'killed'), str(tmp_path / 'killed.log')
  logged_steps = LoggedSteps(log_path)
  rng = random.Random(0)
  kills, kills_during_save = 0, 0
  for attempt in range(10):
    process = _start(workdir, log_path, **KILL_RUN)
    try:
      if kills >= 3 and kills_during_save:
        assert process.wait(timeout=300) == 0, open(log_path).read()[-3000:]
        break
      start = logged_steps()
      if kills_during_save == 0 and kills >= 1:  # Kill while Orbax writes a checkpoint.
        pattern = os.path.join(workdir, 'checkpoints', '*orbax-checkpoint-tmp*')
        _wait_for(lambda: glob.glob(pattern) or process.poll() is not None, 300,
                  'a checkpoint write')
        if process.poll() is None:
          process.send_signal(signal.SIGKILL)
          kills_during_save += 1
      else:  # Kill after a random number of further steps.
        target = start + rng.randint(1, 6)
        _wait_for(lambda: logged_steps() >= target or process.poll() is not None, 300,
                  f'step {target}')
        time.sleep(rng.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
      process.wait(timeout=60)
    finally:  # A failed wait leaves no training running on.
      process.kill()
    if process.returncode == -signal.SIGKILL:
      kills += 1
  assert kills >= 3 and kills_during_save >= 1, (kills, kills_during_save)

  config = _config(**KILL_RUN)
  trainer = engine.Engine(config, methods.create(config))
  manager = checkpointing.create_manager(workdir, 20)
  assert manager.latest_step() == 40
  for step in manager.all_steps():  # Every checkpoint left on disk restores.
    state, restored_step = trainer.restore(manager, step)
    assert restored_step == step == int(state.step)
  final, _ = trainer.restore(manager, 40)
  for a, b in zip(_params(straight), _params(final)):
    np.testing.assert_array_equal(a, b)


def test_sigterm_saves_at_the_step_reached_and_exits_cleanly(tmp_path):
  workdir, log_path = str(tmp_path / 'run'), str(tmp_path / 'run.log')
  overrides = {'training.num_steps': 100_000, 'training.checkpoint_every': 100_000,
               'training.log_every': 1}
  process = _start(workdir, log_path, **overrides)
  logged_steps = LoggedSteps(log_path)
  try:
    _wait_for(lambda: logged_steps() >= 3 or process.poll() is not None, 300, 'step 3')
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
  finally:
    process.kill()
  log = open(log_path).read()
  saved = int(re.search(r'Preempted: saved the checkpoint of step (\d+)', log).group(1))
  assert 3 <= saved < 100_000
  assert checkpointing.create_manager(workdir, 3).all_steps() == [saved]


class _PoisonedTask(images.ImageTask):
  """Feeds NaN bits at one step, as a diverging model would produce NaN losses."""
  POISON_STEP = 6  # The batch of step index 6, i.e. the 7th step.

  def train_iterator(self, batch_size, seed, start_step=0):
    iterator = super().train_iterator(batch_size, seed, start_step)
    original = iterator.batch_at

    def batch_at(step):
      batch = original(step)
      if step == self.POISON_STEP:
        batch['images'] = np.full_like(batch['images'], -1)
      return batch
    iterator.batch_at = batch_at
    return iterator


class _NaNOnNegative(methods.bit_diffusion.BitDiffusion):
  """Bit Diffusion whose bits are NaN where the (poisoned) data is negative."""

  def encode(self, data):
    return jnp.where(jnp.any(data < 0), jnp.nan, super().encode(jnp.maximum(data, 0)))


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
  config = _config(**{'training.num_steps': 10, 'training.log_every': 100,
                      'training.checkpoint_every': 2, 'training.max_checkpoints': 10})
  method = _NaNOnNegative(config, _PoisonedTask(config))
  try:
    train_loop.train_and_evaluate(config, str(tmp_path), method=method)
    raise AssertionError('Training went on past a NaN loss.')
  except FloatingPointError as e:
    message = str(e)
  assert 'NaN or Inf at step 7' in message and 'last good checkpoint (step 6)' in message
  manager = checkpointing.create_manager(str(tmp_path), 10)
  assert manager.all_steps() == [2, 4, 6]  # Nothing was saved from step 8 on.
  state, _ = engine.Engine(config, method).restore(manager, 6)
  assert int(state.first_nonfinite_step) == -1
  assert all(np.isfinite(p).all() for p in _params(state))
