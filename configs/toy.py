"""DisCo-Diff's toy without latents: Bit Diffusion on 8 Gaussians quantised to an 8-bit grid.

Run:   python main.py --config=configs/toy.py --workdir=runs/toy
       python main.py --config=configs/toy.py --workdir=runs/toy --mode=eval   # W2, curvature
Data: 8 Gaussians (sigma 0.2, means on a circle of radius 3; Xu et al. 2024, App.), each
coordinate written on 256 cells over [-4, 4) (bit_diffusion/points/data.py) and generated as
2 x 8 analog bits; fresh points every step. Model: a residual MLP of width 128, 3 blocks.
configs/toy_disco.py is the same network, data and steps with one learned latent of 8 codes.
Hardware and time: 2 shared CPU cores, 80-170 s (11-16 ms a step), eval 80-90 s with 4,000
points. Result (3 seeds, DPM-Solver++(2M), 50 steps, 4,000 points): W2 0.356 to fresh data,
whose own floor is 0.291; 10 steps: 0.368. Details and the comparison: docs/disco.md.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.engine_config(task='points', method='bit_diffusion')

  config.data = ml_collections.ConfigDict()
  config.data.name = 'eight_gaussians'  # The mixture (the only one so far).
  config.data.num_modes = 8  # Gaussians, means evenly spaced on a circle.
  config.data.radius = 3.0  # Radius of the circle of means.
  config.data.sigma = 0.2  # Standard deviation of each Gaussian.
  # The fixed-point grid of each coordinate: 2**num_bits cells over [low, high) (cells of 1/32).
  config.data.num_bits = 8
  config.data.low = -4.0
  config.data.high = 4.0

  config.bits = common.bits_config()
  config.diffusion = common.diffusion_config()

  config.model = ml_collections.ConfigDict()
  config.model.width = 128  # Hidden width of the denoiser MLP.
  config.model.depth = 3  # Residual blocks.

  config.optimizer.learning_rate = 1e-3  # The paper's toy: Adam, 1e-3.
  config.optimizer.warmup_steps = 100
  config.optimizer.ema_decay = 0.999

  config.training.batch_size = 256
  config.training.num_steps = 6000
  config.training.log_every = 500
  config.training.checkpoint_every = 2000
  config.training.sample_every = 0  # A scatter plot at the end only.
  config.training.num_grid_samples = 2000  # Points in the preview scatter plot.
  config.training.compilation_cache = False  # Compiles are a few seconds.

  config.sampling = common.sampling_config()
  config.sampling.sampler = 'dpm2m'  # Deterministic ODE solver (the paper: Heun, 50 steps).
  config.sampling.steps = 50
  config.sampling.num_samples = 4000
  config.sampling.batch_size = 1000

  config.eval = ml_collections.ConfigDict()
  # Samples per W2 (the exact matching costs ~2 s at 2,000, ~13 s at 4,000 on one core) and
  # how many independent sets of samples are scored (their mean and spread are reported).
  config.eval.num_samples = 2000
  config.eval.repeats = 3
  # Settings scored by --mode=eval: every sampler x steps.
  config.eval.sweep_samplers = ('ddim', 'dpm2m')
  config.eval.sweep_steps = (10, 25, 50)
  config.eval.curvature_samples = 500  # Paths whose curvature is measured (0: none).
  return config
