"""DisCo-Diff on the digits without labels: configs/digits_uncond.py plus the latents of
configs/digits_disco.py (2 latents of 16 codes: one can name the class).

Run:   python main.py --config=configs/digits_uncond_disco.py --workdir=runs/digits_uncond_disco
       (then --mode=eval, and tools/disco_latents.py as in configs/digits_disco.py)
Hardware, time and result: docs/disco.md "Digits" (2 shared AVX2 CPU cores).
"""

import ml_collections

from configs import digits_disco
from configs import digits_uncond


def get_config() -> ml_collections.ConfigDict:
  return digits_disco.add_disco(digits_uncond.get_config())
