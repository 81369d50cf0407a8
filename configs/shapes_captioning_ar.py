"""The autoregressive twin of configs/shapes_captioning.py: same data, encoder and decoder size.

Run:   python main.py --config=configs/shapes_captioning_ar.py --workdir=runs/shapes_caption_ar
       make eval-caption CONFIG=configs/shapes_captioning_ar.py WORKDIR=runs/shapes_caption_ar
Causal decoder, token cross-entropy, greedy decoding. Time and result: README "Image captioning".
"""

from configs import coco_captioning
from configs import shapes_captioning


def get_config():
  return coco_captioning.make_autoregressive(shapes_captioning.get_config())
