"""The autoregressive baseline of configs/text.py: same data, width and depth, causal.

Run:   python main.py --config=configs/text_ar.py --workdir=runs/text_ar
       make eval-text CONFIG=configs/text_ar.py WORKDIR=runs/text_ar
Samples are drawn at temperature 1 (the model's own distribution) from a key/value cache.
"""

from configs import text


def get_config():
  return text.make_autoregressive(text.get_config())
