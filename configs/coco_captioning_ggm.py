"""The Glauber Generative Model on MS-COCO captions: configs/coco_captioning.py's data, ViT-B/16
encoder and 6 x 512 decoder, captions given the image.

Run:   make tokenizer CONFIG=configs/coco_captioning_ggm.py    (writes tokenizer.path)
       python main.py --config=configs/coco_captioning_ggm.py --workdir=runs/coco_caption_ggm
       make eval-caption CONFIG=configs/coco_captioning_ggm.py WORKDIR=runs/coco_caption_ggm
Model: the ViT-B/16 encoder at 384x384 (--config.model.vit_checkpoint=FILE as the Bit Diffusion
config) and a non-causal 6 x 512 decoder cross-attending to its tokens
(`captioning.model.GlauberCaptioner`): token embeddings of the 32K pieces plus phi and a time
embedding in, one logit per piece at every position out; trained by binary classification,
sampled by heat-bath dynamics, one position per network call: 4 sweeps of 64 positions are 256
network calls per caption (the image encoded once). The paper (Varma et al. 2025) reports no
captioning; this is the GGM counterpart of the paper's Table 3 settings.
Hardware: accelerators; not trained on this project's CPU machines: no time or result is
claimed.
"""

import ml_collections

from configs import coco_captioning
from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = coco_captioning.get_config()
  config.method = 'ggm'
  common.remove_bit_diffusion_fields(config)
  config.ggm = common.ggm_config(num_sweeps=4)
  return config
