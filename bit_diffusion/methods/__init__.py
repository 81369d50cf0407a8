"""Methods: how data is generated (Bit Diffusion, the autoregressive baseline, the Glauber
Generative Model, DisCo-Diff).

`create(config, task=None)` builds the config's method for a task (by default the config's).
Every method has the same small surface, used by the engine (`engine.py`) and the generation
loop (`generation.py`):
  metric_names, check(num_devices), signature(), create_network(rng),
  loss(graphdef, params, batch, rng, batch_sharding) -> (mean loss, per-example metrics),
  make_sample_fn(graphdef, mesh, **overrides) -> jitted fn(params, rng, cond) -> samples;
and optionally wrap_optimizer(optimizer) -> optimizer (parameter groups, stages),
check_restored(step) (refuse a checkpoint that cannot sample yet), and autoguidance(overrides),
guide_fraction(), guide_step() (Bit Diffusion's autoguidance; `autoguidance` and `guide_step`
below answer for any method).
docs/architecture.md has the steps to add one.
"""

from bit_diffusion import tasks
from bit_diffusion.methods import autoregressive
from bit_diffusion.methods import bit_diffusion
from bit_diffusion.methods import disco
from bit_diffusion.methods import ggm

METHODS = {'bit_diffusion': bit_diffusion.BitDiffusion,
           'autoregressive': autoregressive.Autoregressive,
           'ggm': ggm.GlauberGenerativeModel,
           'disco': disco.DisCo}


def autoguidance(method, overrides=None) -> float:
  """The autoguidance weight of the method's sampler with these overrides; 0 for a method
  without autoguidance."""
  weight = getattr(method, 'autoguidance', None)
  return weight(overrides or {}) if weight is not None else 0.0


def guide_step(method) -> int:
  """The step of the method's autoguidance guide, which training saves and keeps (its
  sampling.guide_fraction of the steps); 0 for none."""
  fraction = getattr(method, 'guide_fraction', None)
  return method.guide_step() if fraction is not None and fraction() else 0


def create(config, task=None):
  """The method object of `config.method` for `task` (default: the config's own task)."""
  if config.method not in METHODS:
    raise ValueError(f'Unknown config.method {config.method!r}; choose one of '
                     f'{tuple(METHODS)}.')
  return METHODS[config.method](config, task if task is not None else tasks.create(config))
