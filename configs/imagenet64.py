"""ImageNet 64x64, class-conditional, uint8 binary bits (paper FID 4.84 with DDPM 400 steps).

Run:   python main.py --config=configs/imagenet64.py --workdir=runs/imagenet64
Data:  TFDS `imagenet_resized/64x64` (box-resized ImageNet with labels; see README "Data").

Hardware: the paper trained 500K steps at batch 1024 on TPU pods. The U-Net has about 240M
parameters (tests/test_unet.py checks it). Not trainable on a CPU; `make bench` measures its
shapes and compile only.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'imagenet64'
  config.data.image_size = 64
  config.data.channels = 3
  config.data.num_bits = 8
  config.data.class_conditional = True
  config.data.num_classes = 1000

  config.model.base_channels = 192
  config.model.channel_multipliers = (1, 2, 3, 4)
  config.model.num_res_blocks = 3
  # The authors' code (pix2seq mhsa_resolutions) attends at 16 and 8 only: 247M parameters, the
  # paper's 'about 240M'; adding 32x32 gives 251M.
  config.model.attention_resolutions = (16, 8)

  config.optimizer.learning_rate = 2e-4  # 1e-4 for uint8 (rand), per the paper.
  config.training.batch_size = 1024
  config.training.num_steps = 500_000

  config.sampling.sampler = 'ddpm'  # The paper's best ImageNet FID: DDPM, 400 steps.
  config.sampling.steps = 400
  return config
