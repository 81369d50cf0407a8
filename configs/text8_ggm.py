"""The Glauber Generative Model on text8, with configs/text8.py's data, Transformer and training.

Data: text8 (download http://mattmahoney.net/dc/text8.zip, unzip it, pass
--config.data.path=FILE; default data/text8): the first 90M characters train, the next 5M
validate, the last 5M test; windows of 256 characters, 27 symbols.
Run:   python main.py --config=configs/text8_ggm.py --workdir=runs/text8_ggm
           (with --config.data.path=FILE when text8 is not at data/text8)
       make eval-text CONFIG=configs/text8_ggm.py WORKDIR=runs/text8_ggm
Model: the 12-layer Transformer of width 768 (12 heads, MLP 3072, rotary positions; 86.3M
parameters) as `transformer.GlauberTransformer`: token embeddings of the 27 symbols plus phi
and a time embedding in, one logit per symbol at every position out; trained by binary
classification, sampled by heat-bath dynamics, one position per network call: 4 sweeps of 256
positions are 1,024 network calls per sample (bit_diffusion/ggm.py).
Hardware: accelerators (the batch shards over every device and host;
--config.training.param_sharding=fsdp splits the weights). Not trained on this project's
machines: no time or result is claimed.
"""

import ml_collections

from configs import common
from configs import text8


def get_config() -> ml_collections.ConfigDict:
  config = text8.get_config()
  config.method = 'ggm'
  common.remove_bit_diffusion_fields(config)
  config.ggm = common.ggm_config(num_sweeps=4)
  # As configs/text_ggm.py: token embeddings times sqrt(768), else the time embedding drowns them.
  config.ggm.token_scale = 'sqrt_width'
  return config
