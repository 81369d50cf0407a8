"""The autoregressive baseline of configs/text.py: same data, width and depth, causal.

Run:   python main.py --config=configs/text_ar.py --workdir=runs/text_ar
       make eval-text CONFIG=configs/text_ar.py WORKDIR=runs/text_ar
Samples are drawn at temperature 1 (the model's own distribution) from a key/value cache.
"""

from configs import text


def get_config():
  config = text.make_autoregressive(text.get_config())
  # About as many steps as Bit Diffusion's 2,400 take in wall time on 2 CPU cores (the AR step
  # is cheaper: one pass, no self-conditioning pass).
  config.training.num_steps = 3000
  return config
