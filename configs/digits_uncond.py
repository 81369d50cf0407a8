"""The digits without labels: `digits.two_block_config()` (configs/digits.py's U-Net with 2
residual blocks per stage, 1,500 steps) unconditional (no class embedding, no label dropout), the
baseline of configs/digits_uncond_disco.py.

Run:   python main.py --config=configs/digits_uncond.py --workdir=runs/digits_uncond
       python main.py --config=configs/digits_uncond.py --workdir=runs/digits_uncond --mode=eval
Samples are scored against real half B as the conditional model's (a classifier's features):
an unconditional model has to get the classes' proportions right as well.
Hardware and time: 2 shared AVX-512 EPYC cores, 231 s (1,500 steps). Result (seed 0, 898 samples):
FID 16.86 at DDIM 100, 20.18 at DPM-Solver++(2M) 25 (floor 5.17); docs/disco.md "Digits".
"""

import ml_collections

from configs import digits


def get_config() -> ml_collections.ConfigDict:
  config = digits.two_block_config()
  config.data.class_conditional = False
  config.diffusion.label_dropout = 0.0  # No labels to drop.
  return config
