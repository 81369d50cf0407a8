"""One code path for 1 device, 8 devices, FSDP and 2 processes: the same training, bit for bit
up to float reduction order."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from bit_diffusion import checkpointing
from bit_diffusion import engine
from bit_diffusion import methods
from bit_diffusion import train_loop
from bit_diffusion.captioning import evaluate as caption_evaluate
from tests import distributed_worker
from tests import subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_workers(tmp_path, name, num_processes=1, devices_per_process=1, *flags):
  """Starts the worker processes; returns each one's results (dicts of arrays)."""
  env = subprocesses.env(
      XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
  extra = []
  if num_processes > 1:
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port = s.getsockname()[1]
    extra = [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={num_processes}']
  processes, outputs = [], []
  for i in range(num_processes):
    out = str(tmp_path / f'{name}_{i}.npz')
    process_flags = [f'--process_id={i}'] if num_processes > 1 else []
    log = open(tmp_path / f'{name}_{i}.log', 'w')
    processes.append(subprocess.Popen(
        [sys.executable, '-m', 'tests.distributed_worker', f'--workdir={tmp_path / name}',
         f'--out={out}', *extra, *process_flags, *flags],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    outputs.append(out)
  for i, process in enumerate(processes):
    if process.wait(timeout=600) != 0:
      for p in processes:
        p.kill()
      raise AssertionError(open(tmp_path / f'{name}_{i}.log').read()[-4000:])
  results = []
  for out in outputs:
    with np.load(out) as data:
      results.append({k: data[k] for k in data.files})
  return results


def _params(result, prefix='param_'):
  return [result[f'{prefix}{i}'] for i in range(sum(k.startswith(prefix) for k in result))]


@pytest.fixture(scope='module')
def single_device(tmp_path_factory):
  """The reference: the same config trained in this process on one device."""
  workdir = tmp_path_factory.mktemp('single')
  state = train_loop.train_and_evaluate(distributed_worker.config(), str(workdir))
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def _assert_close(params_a, params_b):
  """Equal up to float reduction order. Adam divides each gradient by its own scale, so where a
  gradient is nearly zero the order's rounding can move a weight by up to 1e-5 (seen: 2.1e-6),
  still 1/100 of one update at the tiny config's learning rate; a wrong batch split or a lost
  gradient moves weights by whole updates."""
  assert len(params_a) == len(params_b)
  for a, b in zip(params_a, params_b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_eight_devices_and_fsdp_match_one_device(single_device, tmp_path):
  corpus = tmp_path / 'text8_like.txt'
  corpus.write_text(' '.join(['the cat sat on the mat', 'a dog ran to the river',
                              'my friend found a small box'] * 40))
  # One process trains replicated, then with FSDP (one start instead of two).
  eight, = _run_workers(tmp_path, 'eight', 1, 8, '--param_sharding=replicated,fsdp',
                        f'--text8_corpus={corpus}')
  assert int(eight['device_count']) == 8
  _assert_close(_params(eight), single_device)
  _assert_close(_params(eight, 'fsdp_param_'), _params(eight))
  # The text8 config's train step, batch and weights split over 8 devices, trains as on one.
  text8_single = train_loop.train_and_evaluate(distributed_worker.text8_config(str(corpus)),
                                               str(tmp_path / 'text8_single'))
  _assert_close(_params(eight, 'text8_param_'),
                [np.asarray(x) for x in jax.tree.leaves(jax.device_get(text8_single.params))])


def test_two_processes_match_one_process(single_device, tmp_path):
  first, second = _run_workers(tmp_path, 'two', 2, 1, '--captions')
  assert int(first['process_count']) == 2 and int(first['device_count']) == 2
  for a, b in zip(_params(first), _params(second)):  # Both processes hold the same weights.
    np.testing.assert_array_equal(a, b)
  _assert_close(_params(first), single_device)
  # Each process read its own half of every global batch: disjoint, together the whole batch.
  for step in range(distributed_worker.NUM_STEPS):
    a, b = first['indices'][step], second['indices'][step]
    assert not set(a) & set(b) and len(a) == len(b) == 8
  # A one-process run restores the checkpoint the two processes wrote.
  config = distributed_worker.config()
  manager = checkpointing.create_manager(str(tmp_path / 'two'), 3)
  state, step = engine.Engine(config, methods.create(config)).restore(
      manager)
  assert step == distributed_worker.NUM_STEPS
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), _params(first)):
    np.testing.assert_array_equal(np.asarray(a), b)

  # Captions sampled by two processes (the one generation loop, gathered) are those that one
  # process samples from the same checkpoint.
  path = str(first['captions'])
  with open(path) as f:
    two_processes = json.load(f)
  os.rename(path, path + '.two_processes')
  one_process_path = caption_evaluate.sample_from_checkpoint(
      distributed_worker.caption_config(), str(tmp_path / 'two' / 'captions'))
  with open(one_process_path) as f:
    one_process = json.load(f)
  assert len(two_processes) == 6
  assert two_processes == one_process


def test_jit_sampler_splits_cond_and_samples_over_the_mesh():
  """Every method's sampler is `distributed.jit_sampler`: over a mesh, the samples come back
  split over 'data' (the same values as without a mesh), and the train step's CPU kernels are
  the ones compiled."""
  from jax.sharding import Mesh
  from jax.sharding import PartitionSpec as P

  from bit_diffusion import distributed
  from configs import digits

  def sample_fn(params, rng, cond):
    return cond * params['w'] + jax.random.normal(rng, cond.shape)

  params, rng = {'w': np.float32(3)}, jax.random.PRNGKey(0)
  cond = np.arange(8, dtype=np.float32).reshape(4, 2)
  cpu_config = digits.get_config().cpu
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  on_mesh = distributed.jit_sampler(sample_fn, cpu_config, mesh)
  samples = on_mesh(params, rng, cond)
  assert samples.sharding.spec == P('data')
  np.testing.assert_array_equal(
      samples, distributed.jit_sampler(sample_fn, cpu_config, None)(params, rng, cond))
  # cpu.jit's tuned jit for the config's kernel choices; XLA's defaults ('') are a plain jit.
  defaults = cpu_config.copy_and_resolve_references()
  defaults.ynn_fusions = ''
  assert hasattr(on_mesh, 'tuned') == (jax.default_backend() == 'cpu')
  assert not hasattr(distributed.jit_sampler(sample_fn, defaults, mesh), 'tuned')
