"""CIFAR-10 32x32, unconditional, uint8 binary bits: the paper's main setting (FID 3.48).

Run:   python main.py --config=configs/cifar10.py --workdir=runs/cifar10
Class-conditional (paper FID 2.72):  add --config.data.class_conditional=True
Gray code:  --config.bits.encoding=gray
uint8 (rand):  --config.bits.encoding=permuted --config.diffusion.output=softmax

Hardware: the paper trained 1.5M steps at batch 128 on TPUs. The U-Net has about 51M parameters
(tests/test_unet.py checks it). On a 2-core CPU this config only runs for smoke tests; see
`make bench` for measured step times.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'cifar10'
  config.data.image_size = 32
  config.data.channels = 3
  config.data.num_bits = 8
  config.data.num_classes = 10
  return config
