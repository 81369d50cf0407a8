"""Tiny variants of the real configs, shared by the tests and the benchmarks' --tiny runs, so
that XLA compiles stay cheap (a few seconds) while every code path of the real config runs.

Each function takes the real config's module-level overrides as {'section.field': value}.
"""

import ml_collections

from bit_diffusion import config_overrides
from configs import cifar10
from configs import digits
from configs import digits_disco
from configs import digits_ggm

# A one-stage 16-channel U-Net without attention: the cheapest compile, for tests that check the
# machinery around the network (resumes, kills, shardings) rather than the network. Applied to
# any image config by `tiny_unet`; as main.py flags, `tiny_digits_flags(**TINY_UNET, ...)`.
TINY_UNET = {'model.base_channels': 16, 'model.channel_multipliers': (1,),
             'model.num_res_blocks': 1, 'model.attention_resolutions': ()}

# configs/digits.py with TINY_UNET's U-Net plus attention at 8x8, batch 16 and 4-step sampling.
# One stage: the down- and upsampling stages are tests/test_unet.py's (and one config variant
# trains them, tests/test_config_variants.py); with two stages every trace, compile and cache
# load of the tests' many tiny runs costs 1.6 to 1.8 times as much.
TINY_DIGITS = {
    **TINY_UNET, 'model.attention_resolutions': (8,),
    'model.head_dim': 16,  # One head over the 16 channels.
    'training.batch_size': 16,
    'training.num_steps': 4, 'training.log_every': 2, 'training.checkpoint_every': 2,
    'training.sample_every': 0, 'training.num_grid_samples': 8,
    'training.compilation_cache': False,  # The tests set their own cache (tests/conftest.py).
    'optimizer.warmup_steps': 2, 'sampling.steps': 4, 'sampling.num_samples': 12,
    # A constant rate after the warm-up: the cosine decay bakes training.num_steps into the
    # compiled train step, so every step count the tests use (2, 3, 4, 6, 40, ...) would compile
    # its own. The cosine schedule trains in tests/test_config_variants.py.
    'optimizer.decay': 'constant',
    'sampling.batch_size': 8, 'eval.num_batches': 2, 'data.prefetch': 0,
    'eval.num_samples': 0,  # Sample metrics: tests/test_digits_metrics.py.
    'eval.infill_images': 0,  # Infilling: tests/test_infill.py.
}

# What tiny_digits adds to configs/digits.py: the demo trains without label dropout at peak rate
# 3e-3; the tests sample with guidance too and keep the settings they were written with (those
# of digits.two_block_config(), on which the DisCo-Diff and GGM digits configs build), without
# the demo's autoguidance guide (tests/test_train.py keeps one).
TINY_DIGITS_TRAINING = {'diffusion.label_dropout': 0.1, 'optimizer.learning_rate': 2e-3,
                        'sampling.guide_fraction': 0.0}

# configs/digits_ggm.py with a 1-layer Transformer of width 32 and one sweep (64 network calls
# a sample); the rest as TINY_DIGITS.
TINY_DIGITS_GGM = {
    **{k: v for k, v in TINY_DIGITS.items() if not k.startswith(('model.', 'sampling.steps'))},
    'model.width': 32, 'model.depth': 1, 'model.mlp_dim': 64, 'model.num_heads': 2,
    'ggm.num_sweeps': 1,
}

# configs/digits_disco.py's encoder, latent Transformer, codebook and prior made small, on
# TINY_DIGITS (cross-attention to the latents after its attention at 8x8); the last 2 of 4 steps
# fit the prior.
TINY_DIGITS_DISCO = {
    **TINY_DIGITS, 'model.encoder_width': 8, 'model.latent_width': 16,
    'disco.embedding_dim': 8, 'disco.prior_width': 16, 'disco.prior_steps': 2,
    'training.num_steps': 4, 'training.checkpoint_every': 2, 'training.sample_every': 0,
}

# A captioning config with 16x16 images, a 1-layer encoder and decoder of width 32.
TINY_CAPTIONING = {
    'data.image_size': 16, 'model.patch_size': 8, 'data.prefetch': 0,
    'model.encoder_width': 32, 'model.encoder_depth': 1, 'model.encoder_mlp_dim': 64,
    'model.encoder_heads': 2, 'model.width': 32, 'model.depth': 1, 'model.mlp_dim': 64,
    'model.num_heads': 2, 'training.batch_size': 16, 'training.num_steps': 40,
    'training.log_every': 20, 'training.checkpoint_every': 40, 'training.sample_every': 0,
    'training.num_grid_samples': 4, 'training.compilation_cache': False,
    'optimizer.warmup_steps': 5, 'sampling.num_samples': 6, 'sampling.batch_size': 4,
    'eval.num_images': 6, 'eval.infill_captions': 4,
}
# The diffusion captioner's sampler and sweep (absent from the autoregressive baseline).
TINY_CAPTIONING_DIFFUSION = {'sampling.steps': 3, 'eval.sweep_steps': (2,),
                             'eval.sweep_td': (0.0, 1.0)}
# The Glauber Generative Model's process on captions: one sweep of the 20 positions (20 network
# calls a caption).
TINY_CAPTIONING_GGM = {'ggm.num_sweeps': 1}

# A text config with windows of 16 characters and a 1-layer Transformer of width 32.
TINY_TEXT = {
    'data.sequence_length': 16, 'data.prefetch': 0, 'model.width': 32, 'model.depth': 1,
    'model.mlp_dim': 64, 'model.num_heads': 2, 'training.batch_size': 16,
    'training.num_steps': 40, 'training.log_every': 20, 'training.checkpoint_every': 40,
    'training.sample_every': 0, 'training.num_grid_samples': 4,
    'training.compilation_cache': False, 'optimizer.warmup_steps': 5,
    'optimizer.decay': 'constant',  # One compile for every step count (TINY_DIGITS).
    'sampling.num_samples': 6, 'sampling.batch_size': 4, 'eval.num_samples': 8,
    'eval.infill_spans': (1, 4), 'eval.infill_windows': 6,
}
# The diffusion text model's sampler and sweep (absent from the autoregressive baseline).
TINY_TEXT_DIFFUSION = {'sampling.steps': 3, 'eval.sweep_steps': (2,), 'eval.sweep_td': (0.0, 1.0)}
# The Glauber Generative Model's process: 2 sweeps of 16 positions (32 network calls a sample).
TINY_TEXT_GGM = {'ggm.num_sweeps': 2}

# configs/toy.py with a 16-wide, one-block MLP, batch 16, 4 steps and 4-step sampling.
TINY_TOY = {
    'model.width': 16, 'model.depth': 1, 'training.batch_size': 16, 'training.num_steps': 4,
    'training.log_every': 2, 'training.checkpoint_every': 2, 'training.sample_every': 0,
    'training.num_grid_samples': 8, 'optimizer.warmup_steps': 2, 'sampling.steps': 4,
    'sampling.num_samples': 12, 'sampling.batch_size': 8, 'eval.num_samples': 24,
    'eval.repeats': 1, 'eval.sweep_samplers': ('ddpm', 'dpm2m'), 'eval.sweep_steps': (4,),
    'eval.curvature_samples': 8,
}
# configs/toy_disco.py's encoder, codebook and prior made small; the last 2 of 4 steps fit the
# prior.
TINY_TOY_DISCO = {'model.encoder_width': 16, 'model.encoder_depth': 2, 'disco.embedding_dim': 8,
                  'disco.prior_width': 16, 'disco.prior_steps': 2}


def tiny_digits(**overrides) -> ml_collections.ConfigDict:
  """configs/digits.py made tiny (TINY_DIGITS), then `overrides` ('section.field': value)."""
  return config_overrides.apply(digits.get_config(),
                               {**TINY_DIGITS, **TINY_DIGITS_TRAINING, **overrides})


def tiny_digits_flags(**overrides) -> list[str]:
  """The same config as `tiny_digits(**overrides)`, as main.py flags."""
  return ['--config=configs/digits.py'] + config_overrides.as_flags(
      {**TINY_DIGITS, **TINY_DIGITS_TRAINING, **overrides})


def tiny_digits_disco(config_module=None, **overrides) -> ml_collections.ConfigDict:
  """configs/digits_disco.py (or another DisCo-Diff digits config module) made tiny
  (TINY_DIGITS_DISCO), then `overrides`."""
  config = (config_module or digits_disco).get_config()
  return config_overrides.apply(config, {**TINY_DIGITS_DISCO, **overrides})


def tiny_digits_ggm(**overrides) -> ml_collections.ConfigDict:
  """configs/digits_ggm.py made tiny (TINY_DIGITS_GGM), then `overrides`."""
  return config_overrides.apply(digits_ggm.get_config(), {**TINY_DIGITS_GGM, **overrides})


def tiny_cifar10(**overrides) -> ml_collections.ConfigDict:
  """configs/cifar10.py (the real TFDS pipeline) with a one-stage 16-channel U-Net without
  attention (the cheapest compile; the U-Net's stages and attention are tests/test_unet.py's)
  and batch 4."""
  return config_overrides.apply(cifar10.get_config(), {
      **TINY_UNET, 'training.batch_size': 4,
      'training.num_steps': 2, 'training.log_every': 1, 'training.checkpoint_every': 2,
      'training.num_grid_samples': 2, 'training.compilation_cache': False, 'sampling.steps': 2,
      **overrides})


def tiny_text(config_module, **overrides) -> ml_collections.ConfigDict:
  """A text config module's config made tiny (TINY_TEXT), then `overrides`."""
  config = config_module.get_config()
  tiny = dict(TINY_TEXT)
  if config.method == 'bit_diffusion':
    tiny.update(TINY_TEXT_DIFFUSION)
  if config.method == 'ggm':
    tiny.update(TINY_TEXT_GGM)
  return config_overrides.apply(config, {**tiny, **overrides})


def tiny_toy(config_module, **overrides) -> ml_collections.ConfigDict:
  """configs/toy.py or toy_disco.py made tiny (TINY_TOY, TINY_TOY_DISCO), then `overrides`."""
  config = config_module.get_config()
  tiny = dict(TINY_TOY)
  if config.method == 'disco':
    tiny.update(TINY_TOY_DISCO)
  return config_overrides.apply(config, {**tiny, **overrides})


def tiny_unet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (an image config) with a one-stage 16-channel U-Net without attention."""
  return config_overrides.apply(config, TINY_UNET)


def tiny_captioning(config_module, **overrides) -> ml_collections.ConfigDict:
  """A captioning config module's config made tiny (TINY_CAPTIONING, and the method's own
  tiny fields), then `overrides`."""
  config = config_module.get_config()
  tiny = dict(TINY_CAPTIONING)
  if config.method == 'bit_diffusion':
    tiny.update(TINY_CAPTIONING_DIFFUSION)
  if config.method == 'ggm':
    tiny.update(TINY_CAPTIONING_GGM)
  return config_overrides.apply(config, {**tiny, **overrides})
