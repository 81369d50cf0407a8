"""The Glauber Generative Model on the digits of configs/digits.py: same data, labels, batch,
optimizer and scoring.

Run:   python main.py --config=configs/digits_ggm.py --workdir=runs/digits_ggm
       python main.py --config=configs/digits_ggm.py --workdir=runs/digits_ggm --mode=eval
Model: each 8x8 digit is a sequence of 64 tokens (raster order) over its 17 grey levels 0..16
(the vocabulary is data.display_max + 1 = 17, not the 32 values of its 5 bits: noise draws and
samples stay among the values the data holds). A non-causal Transformer of 4 layers, width 128,
learned positions (`transformer.GlauberTransformer`) reads the token embeddings (17 levels plus
phi), a time embedding and the digit's label, and gives one logit per level at every position;
trained by binary classification (signal or noise), sampled by heat-bath dynamics, one position
per network call: 4 sweeps of 64 positions are 256 network calls per sample (bit_diffusion/
ggm.py). --mode=eval scores as configs/digits.py: FID, precision and recall in the digits
classifier's features against half B of the data, and the classifier's agreement on digits
whose lower half was removed and filled.
Hardware and time: training.num_steps gives the training time of configs/digits.py's 1,500
steps on 2 CPU cores (the comment at the field). Not yet scored.
"""

import ml_collections

from configs import common
from configs import digits


def get_config() -> ml_collections.ConfigDict:
  config = digits.get_config()
  config.method = 'ggm'
  common.remove_bit_diffusion_fields(config)  # Keeps data.num_bits: the values' range.

  # The vocabulary is 0..data.display_max (16, from configs/digits.py): 17 levels.
  config.model = ml_collections.ConfigDict()
  config.model.width = 128
  config.model.depth = 4
  config.model.mlp_dim = 512
  config.model.num_heads = 4
  # 'learned': an embedding per position of the 64 (raster order); 'rotary': relative offsets
  # along the raster order, which do not see rows and columns.
  config.model.positions = 'learned'

  config.ggm = common.ggm_config(num_sweeps=4)
  # The training time of configs/digits.py's 1,500 steps (measured steps/s at the field).
  config.training.num_steps = 1500
  return config
