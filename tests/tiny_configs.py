"""Tiny variants of the real configs, shared by the tests so that compiles stay cheap."""

from configs import cifar10
from configs import digits


def tiny_digits(**overrides):
  """configs/digits.py with a 16-channel U-Net, batch 16 and 4-step sampling."""
  config = digits.get_config()
  config.model.base_channels = 16
  config.model.num_res_blocks = 1
  config.training.batch_size = 16
  config.training.num_steps = 4
  config.training.log_every = 2
  config.training.checkpoint_every = 2
  config.training.sample_every = 0
  config.training.num_grid_samples = 8
  config.training.compilation_cache = False  # The tests' own cache is set in conftest.
  config.optimizer.warmup_steps = 2
  config.sampling.steps = 4
  config.sampling.num_samples = 12
  config.sampling.batch_size = 8
  config.eval.num_batches = 2
  config.data.prefetch = 0
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def tiny_cifar10():
  """configs/cifar10.py (real TFDS pipeline) with a small U-Net and batch 4."""
  config = cifar10.get_config()
  config.model.base_channels = 16
  config.model.num_res_blocks = 1
  config.model.channel_multipliers = (1, 2)
  config.model.attention_resolutions = (16,)
  config.training.batch_size = 4
  config.training.num_steps = 2
  config.training.log_every = 1
  config.training.checkpoint_every = 2
  config.training.num_grid_samples = 2
  config.training.compilation_cache = False
  config.sampling.steps = 2
  return config
