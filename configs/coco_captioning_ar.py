"""The autoregressive baseline of configs/coco_captioning.py (paper Table 3: BLEU-4 33.9).

Run:   python main.py --config=configs/coco_captioning_ar.py --workdir=runs/coco_caption_ar
       make eval-caption CONFIG=configs/coco_captioning_ar.py WORKDIR=runs/coco_caption_ar
The same encoder-decoder with causal self-attention, token cross-entropy, greedy decoding.
Hardware: accelerators; not trained on this project's CPU machines.
"""

from configs import coco_captioning


def get_config():
  return coco_captioning.make_autoregressive(coco_captioning.get_config())
