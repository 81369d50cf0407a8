"""DisCo-Diff on the digits without labels: configs/digits_uncond.py plus the latents of
configs/digits_disco.py (2 latents of 16 codes: one can name the class).

Run:   python main.py --config=configs/digits_uncond_disco.py --workdir=runs/digits_uncond_disco
       (then --mode=eval, and tools/disco_latents.py as in configs/digits_disco.py)
Hardware and time: 2 shared AVX-512 EPYC cores, 830 s for 1,800 steps under a heavy load (load
average ~9; the class-conditional pair measured +58% wall time against the plain run). Result
(seed 0, 898 samples): FID 12.75 at DDIM 100, 15.27 at DPM-Solver++(2M) 25, 19-24% below
configs/digits_uncond.py at every sampler setting; 8 code pairs used. docs/disco.md "Digits".
"""

import ml_collections

from configs import digits_disco
from configs import digits_uncond


def get_config() -> ml_collections.ConfigDict:
  return digits_disco.add_disco(digits_uncond.get_config())
