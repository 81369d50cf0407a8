"""The Glauber Generative Model on the text of configs/text.py: same data, width and depth.

Run:   python main.py --config=configs/text_ggm.py --workdir=runs/text_ggm
       python main.py --config=configs/text_ggm.py --workdir=runs/text_ggm --mode=sample
Model: a non-causal Transformer of 4 layers, width 128 (`transformer.GlauberTransformer`) whose
input is the token embeddings of the 27 symbols plus phi and a time embedding, and whose output
is one logit per symbol at every position; trained by binary classification (signal or noise),
sampled by heat-bath dynamics, one position per network call (bit_diffusion/ggm.py).
Not yet measured: no run of this config has been timed or scored.
"""

import ml_collections

from configs import common
from configs import text


def get_config() -> ml_collections.ConfigDict:
  config = text.get_config()
  config.method = 'ggm'
  common.remove_bit_diffusion_fields(config)

  config.ggm = ml_collections.ConfigDict()
  # Sweeps of the forward process over the window: T = num_sweeps * sequence_length steps, one
  # position re-drawn per step in round-robin order; sampling takes T network calls.
  config.ggm.num_sweeps = 4
  # Survival of a token after sweep k of num_sweeps: 'cosine' cos(pi/2 (k+1)/num_sweeps) or
  # 'linear' 1 - (k+1)/num_sweeps; the last sweep replaces every token by uniform noise.
  config.ggm.schedule = 'cosine'
  # Positions hidden and classified per network call, in training and sampling: 1 is the
  # paper's dynamics; k > 1 draws k consecutive positions independently (k times faster).
  config.ggm.positions_per_call = 1
  # The training time of configs/text.py's 2,300 steps: a GGM step (one network pass, no
  # self-conditioning pass) is about 1.7 times faster (3.6 against 2.1 steps/s, 2 AVX2 cores).
  config.training.num_steps = 3800
  return config
