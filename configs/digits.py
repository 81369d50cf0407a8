"""The embedded default: scikit-learn's 8x8 handwritten digits, 17 grey levels as 5 analog bits.

Run:   make demo      (= python main.py --config=configs/digits.py --workdir=runs/digits)
Needs no download: the 1,797 digits ship inside scikit-learn. Class-conditional, so the sample
grid (runs/digits/samples/grid_*.png) shows one digit per column, 0 to 9.
Hardware and time: see README "The embedded default" for the measured wall time on 2 CPU cores.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'digits'
  config.data.image_size = 8
  config.data.channels = 1
  config.data.num_bits = 5  # Values 0..16 need 5 bits.
  config.data.random_flip = False  # Mirrored digits are not digits.
  config.data.display_max = 16  # Grids show 16 (the data's maximum) as white.
  config.data.class_conditional = True
  config.data.num_classes = 10

  # No label dropout: every example trains the conditional model, which scores better precision
  # at the demo's short run (at 2e-3: 0.836 and 0.853 against 0.821 and 0.826 at 0.1, seeds 0
  # and 1). Classifier-free guidance (sampling.guidance) needs a model trained with a rate > 0:
  # --config.diffusion.label_dropout=0.1 (as digits.two_block_config()).
  config.diffusion.label_dropout = 0.0

  config.model.base_channels = 32
  config.model.channel_multipliers = (1, 2)
  # One residual block per stage: a train step of 2.59 GFLOP instead of 3.86 at batch 32, about
  # 1.5 times as many steps per second on 2 CPU cores; 2,200 steps of it take less time than
  # 1,500 steps of two blocks and score better (docs/benchmarks.md "The demo's schedule").
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (4,)

  # A short run that ends well: a high peak learning rate, cosine decay to 0 at the last step and
  # a short EMA (README "The embedded default" has the measured time and metrics, and the earlier
  # 4,000-step schedule it replaced). 3e-3 rather than 2e-3 trades FID for precision, the metric
  # where the short run trails the 4,000-step one (docs/benchmarks.md "Guidance, learning rate").
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 100
  config.optimizer.decay = 'cosine'
  config.optimizer.ema_decay = 0.995

  config.training.batch_size = 32
  config.training.num_steps = 2200
  config.training.log_every = 100
  config.training.checkpoint_every = 1100
  config.training.sample_every = 1100
  config.training.num_grid_samples = 100

  config.sampling.steps = 100
  config.sampling.num_samples = 100
  config.sampling.batch_size = 100
  # Training keeps the checkpoint of step 825 (3/8 of the run) as an autoguidance guide; the
  # demo samples without it. --config.sampling.autoguidance=1 samples the demo model guided by
  # it: FID 5.47, precision 0.894, recall 0.837 against 5.90, 0.862, 0.865 unguided (means of 8
  # sampling seeds; README "Sample quality"), at twice the network calls.
  config.sampling.guide_fraction = 0.375

  # Digits FID in the feature space of a small digits classifier, against half B of the data;
  # half A (898 real digits) gives the real-against-real floor with as many images.
  config.eval.num_samples = 898
  config.eval.feature_net = 'digits'
  config.eval.reference = 'half'
  config.eval.feature_batch_size = 1000
  # Digits whose lower half is removed, filled by the model and read by the digits classifier
  # (bit_diffusion/image_infill.py); 0 skips it.
  config.eval.infill_images = 500
  return config


def two_block_config():
  """The demo until 2026-12-04: two residual blocks per stage (0.89M parameters), 1,500 steps,
  peak learning rate 2e-3, label dropout 0.1.

  The DisCo-Diff, unconditional and GGM digits configs build on it: their measured results
  (docs/disco.md, README "Configs") compare with this U-Net (digits FID 6.03 at DDIM 100).
  """
  config = get_config()
  config.diffusion.label_dropout = 0.1
  config.optimizer.learning_rate = 2e-3
  config.model.num_res_blocks = 2
  config.training.num_steps = 1500
  config.training.checkpoint_every = 750
  config.training.sample_every = 750
  config.sampling.guide_fraction = 0.0
  return config
