"""Several processes: start JAX's distributed runtime, and lay parameters out over the mesh.

Multi-host training is JAX's own: `jax.distributed.initialize` joins the processes into one
system whose devices form the global `Mesh`; `jax.jit` with shardings does the rest. This module
decides when to initialise (explicit flags, or a cluster JAX detects: Cloud TPU pod slices, SLURM,
Open MPI) and, for FSDP, how to shard each parameter.
"""

import os
from typing import Any
from typing import Optional

import jax
from absl import logging
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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
