"""Several processes: start JAX's distributed runtime, and lay parameters out over the mesh.

Multi-host training is JAX's own: `jax.distributed.initialize` joins the processes into one
system whose devices form the global `Mesh`; `jax.jit` with shardings does the rest. This module
decides when to initialise (explicit flags, or a cluster JAX detects: Cloud TPU pod slices, SLURM,
Open MPI), for FSDP how to shard each parameter, and how a sharded batch splits into microbatches
that every device works on.
"""

import os
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bit_diffusion import cpu

PARAM_SHARDINGS = ('replicated', 'fsdp')


def _detected_cluster() -> Optional[str]:
  """The kind of multi-process job this process is part of, if JAX can set it up by itself."""
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_PROCID' in os.environ:
    return 'SLURM'
  if int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'Open MPI'
  hostnames = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  if len([h for h in hostnames.split(',') if h]) > 1:
    return 'Cloud TPU pod slice'
  return None


def initialize(coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1) -> bool:
  """Starts the distributed runtime when this is one process of several; returns whether it did.

  Args:
    coordinator_address: 'host:port' of process 0 (GPU clusters without SLURM).
    num_processes: the number of processes (with coordinator_address).
    process_id: this process's index in [0, num_processes).

  With no arguments, initialises only inside a cluster that JAX detects itself (TPU pod slices,
  SLURM with several tasks, Open MPI); a single process does nothing. On CPU the collectives
  between processes use gloo.
  """
  explicit = bool(coordinator_address) or num_processes > 1
  cluster = None if explicit else _detected_cluster()
  if not explicit and cluster is None:
    return False
  if explicit and not (coordinator_address and num_processes > 1 and
                       0 <= process_id < num_processes):
    raise ValueError('Multi-process training needs all three of --coordinator_address=HOST:PORT, '
                     f'--num_processes=N (> 1) and --process_id in [0, N); got '
                     f'{coordinator_address!r}, {num_processes}, {process_id}.')
  if os.environ.get('JAX_PLATFORMS', '').startswith('cpu'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    logging.info('Detected a %s: initialising jax.distributed.', cluster)
    jax.distributed.initialize()
  logging.info('Process %d of %d; %d local and %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def param_shardings(abstract_tree: Any, mesh: Mesh, mode: str) -> Any:
  """Shardings for a pytree of parameters or optimizer state.

  'replicated': every leaf on every device. 'fsdp': each leaf is split over the 'data' axis
  along its largest dimension that divides by the axis size (small or indivisible leaves stay
  replicated), so parameters, EMA and Adam moments take 1 / devices of the memory each; XLA
  gathers them for the forward pass.
  """
  if mode not in PARAM_SHARDINGS:
    raise ValueError(f'Unknown training.param_sharding {mode!r}; choose one of '
                     f'{PARAM_SHARDINGS}.')
  replicated = NamedSharding(mesh, P())
  size = mesh.shape['data']
  if mode == 'replicated' or size == 1:
    return jax.tree.map(lambda _: replicated, abstract_tree)

  def shard(leaf):
    shape = getattr(leaf, 'shape', ())
    axes = sorted(range(len(shape)), key=lambda i: -shape[i])
    for axis in axes:
      if shape[axis] % size == 0 and shape[axis] >= size:
        spec = [None] * len(shape)
        spec[axis] = 'data'
        return NamedSharding(mesh, P(*spec))
    return replicated
  return jax.tree.map(shard, abstract_tree)


def jit_sampler(sample_fn: Callable[..., Any], cpu_config, mesh: Optional[Mesh]
                ) -> Callable[..., Any]:
  """`sample_fn(params, rng, cond) -> samples` jitted with the train step's CPU kernels (`cpu.jit`).

  With a mesh, `cond` (batch-first leaves) and the samples split over its 'data' axis, the key is
  replicated, and the parameters keep the sharding they come with (replicated, or split for
  FSDP). Every method's `make_sample_fn` returns one of these.
  """
  if mesh is None:
    return cpu.jit(sample_fn, cpu_config)
  batch_sharding = NamedSharding(mesh, P('data'))
  return cpu.jit(sample_fn, cpu_config, in_shardings=(None, NamedSharding(mesh, P()),
                                                      batch_sharding),
                 out_shardings=batch_sharding)


def microbatch_ranges(batch_size: int, microbatch_size: int, num_shards: int
                      ) -> list[tuple[int, int]]:
  """Row ranges [start, stop) within each shard of the microbatches of a sharded batch.

  A batch of `batch_size` rows split evenly over `num_shards` devices is cut into microbatches of
  `microbatch_size` rows, `microbatch_size / num_shards` from each shard (so every device works
  on every microbatch); the last one is smaller when they do not divide. 0 = one microbatch.
  """
  if batch_size % num_shards:
    raise ValueError(f'A batch of {batch_size} does not split over {num_shards} shards.')
  if microbatch_size < 0 or microbatch_size % num_shards:
    raise ValueError(f'microbatch_size={microbatch_size} must be 0 or a positive multiple of '
                     f'the {num_shards} devices of the data axis.')
  rows = batch_size // num_shards
  step = microbatch_size // num_shards or rows
  return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def microbatch_rows(x: jax.Array, start: int, stop: int, num_shards: int) -> jax.Array:
  """Rows [start, stop) of each of the `num_shards` equal blocks of x's leading axis.

  x: [B, ...] -> [num_shards * (stop - start), ...], shard by shard: the part of a microbatch
  (see `microbatch_ranges`) that each device already holds.
  """
  blocks = x.reshape(num_shards, -1, *x.shape[1:])[:, start:stop]
  return blocks.reshape(-1, *x.shape[1:])


def join_microbatch_rows(parts: list[jax.Array], num_shards: int) -> jax.Array:
  """Inverse of `microbatch_rows` over the ranges of `microbatch_ranges`: [B, ...] again."""
  blocks = [part.reshape(num_shards, -1, *part.shape[1:]) for part in parts]
  joined = jnp.concatenate(blocks, axis=1)
  return joined.reshape(-1, *joined.shape[2:])
