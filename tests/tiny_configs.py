"""Tiny variants of the real configs, shared by the tests so that compiles stay cheap, and a
helper that trains one while recording its logged losses."""

from bit_diffusion import train
from configs import cifar10
from configs import digits

# configs/digits.py with a 16-channel U-Net, batch 16 and 4-step sampling.
TINY_DIGITS = {
    'model.base_channels': 16, 'model.num_res_blocks': 1, 'training.batch_size': 16,
    'training.num_steps': 4, 'training.log_every': 2, 'training.checkpoint_every': 2,
    'training.sample_every': 0, 'training.num_grid_samples': 8,
    'training.compilation_cache': False,  # The tests' own cache is set in conftest.
    'optimizer.warmup_steps': 2, 'sampling.steps': 4, 'sampling.num_samples': 12,
    'sampling.batch_size': 8, 'eval.num_batches': 2, 'data.prefetch': 0,
    'eval.num_samples': 0,  # Sample metrics: tests/test_digits_metrics.py.
}


def tiny_digits(**overrides):
  """configs/digits.py made tiny (TINY_DIGITS), then `overrides` ('section.field': value)."""
  config = digits.get_config()
  for key, value in {**TINY_DIGITS, **overrides}.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def tiny_digits_flags(**overrides) -> list[str]:
  """The same config as `tiny_digits(**overrides)`, as main.py flags."""
  flags = ['--config=configs/digits.py']
  for key, value in {**TINY_DIGITS, **overrides}.items():
    flags.append(f'--config.{key}={value}')
  return flags


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


def train_recording_losses(config, workdir, trainer_class=train.Trainer):
  """Runs train_and_evaluate; returns (final state, the mean loss of every logged interval)."""
  losses, original = [], train.TrainMetrics.compute

  def recording_compute(self):
    values = original(self)
    losses.append(float(values['loss']))
    return values
  train.TrainMetrics.compute = recording_compute
  try:
    state = train.train_and_evaluate(config, workdir, trainer_class=trainer_class)
  finally:
    train.TrainMetrics.compute = original
  return state, losses
