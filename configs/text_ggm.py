"""The Glauber Generative Model on the text of configs/text.py: same data, width and depth.

Run:   python main.py --config=configs/text_ggm.py --workdir=runs/text_ggm
       python main.py --config=configs/text_ggm.py --workdir=runs/text_ggm --mode=sample
Model: a non-causal Transformer of 4 layers, width 128 (`transformer.GlauberTransformer`) whose
input is the token embeddings of the 27 symbols plus phi and a time embedding, and whose output
is one logit per symbol at every position; trained by binary classification (signal or noise),
sampled by heat-bath dynamics, one position per network call (bit_diffusion/ggm.py).
Measured (2 AVX2 EPYC cores): 3,800 steps in 17 min 26 s (2026-12-03, the training time of
configs/text.py then); `make eval-text CONFIG=configs/text_ggm.py WORKDIR=runs/text_ggm` in 6 min:
generative perplexity 65.6, bigram TV 0.226 (2026-12-05, with ggm.token_scale='sqrt_width'; 113.3
and 0.436 before it, the unigram sampler's level; README, "Text").
"""

import ml_collections

from configs import common
from configs import text


def get_config() -> ml_collections.ConfigDict:
  config = text.get_config()
  config.method = 'ggm'
  common.remove_bit_diffusion_fields(config)

  config.ggm = common.ggm_config(num_sweeps=4)
  # Token embeddings times sqrt(width): with 'one' the time embedding, about 4 times larger,
  # drowns them and the classifier learned nothing of the context in 3,800 steps (training
  # accuracy 0.65, the characters' frequencies); with sqrt(width) it reads the context
  # (docs/reference.md, "GGM reads its context").
  config.ggm.token_scale = 'sqrt_width'
  # The training time of configs/text.py's 2,300 steps: a GGM step (one network pass, no
  # self-conditioning pass) is about 1.7 times faster (3.6 against 2.1 steps/s, 2 AVX2 cores).
  config.training.num_steps = 3800
  return config
