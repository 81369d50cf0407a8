"""The Glauber Generative Model on the digits of configs/digits.py: same data, labels, batch,
optimizer and scoring.

Run:   python main.py --config=configs/digits_ggm.py --workdir=runs/digits_ggm
       python main.py --config=configs/digits_ggm.py --workdir=runs/digits_ggm --mode=eval
Model: each 8x8 digit is a sequence of 64 tokens (raster order) over its 17 grey levels 0..16
(the vocabulary is data.display_max + 1 = 17, not the 32 values of its 5 bits: noise draws and
samples stay among the values the data holds). A non-causal Transformer of 4 layers, width 64,
learned positions (`transformer.GlauberTransformer`) reads the token embeddings (17 levels plus
phi), a time embedding and the digit's label, and gives one logit per level at every position;
trained by binary classification (signal or noise), sampled by heat-bath dynamics, one position
per network call: 4 sweeps of 64 positions are 256 network calls per sample (bit_diffusion/
ggm.py). --mode=eval scores as configs/digits.py: FID, precision and recall in the digits
classifier's features against half B of the data, and the classifier's agreement on digits
whose lower half was removed and filled.
Built on digits.two_block_config() (configs/digits.py until 2026-12-04, 2 residual blocks per
stage), the U-Net its results compare with. Hardware and time: training.num_steps gives the
training wall time of that config's 1,500 steps on 2 CPU cores (the comment at the field).
Measured once (2026-12-03, 2 shared AVX2 cores at load 3 to 4, seed 0, the commands above):
training 3 min 30 s (two_block_config just after: 3 min 48 s); --mode=eval 3 min 54 s: FID
210.4 (real-vs-real floor 5.17; two_block_config 6.02), precision 0.335 and recall 0.369
(0.78 and 0.90), infill agreement 0.562 (0.978; another digit's lower half gives 0.332). The
samples have the digits' dark borders and vertical strokes, few readable digits: each training
example classifies one position (ggm.positions_per_call=1) where Bit Diffusion's loss covers all
64 pixels.
"""

import ml_collections

from configs import common
from configs import digits


def get_config() -> ml_collections.ConfigDict:
  config = digits.two_block_config()
  config.method = 'ggm'
  common.remove_bit_diffusion_fields(config)  # Keeps data.num_bits: the values' range.

  # The vocabulary is 0..data.display_max (16, from configs/digits.py): 17 levels. A Transformer
  # whose train step costs about what the U-Net's does (0.107 against 0.105 CPU seconds per
  # step, 2 cores), so that equal time is nearly equal steps: 215K parameters (the U-Net: 887K;
  # width 128 would match them at 2.5 times the step time).
  config.model = ml_collections.ConfigDict()
  config.model.width = 64
  config.model.depth = 4
  config.model.mlp_dim = 256
  config.model.num_heads = 4
  # 'learned': an embedding per position of the 64 (raster order); 'rotary': relative offsets
  # along the raster order, which do not see rows and columns.
  config.model.positions = 'learned'

  config.ggm = common.ggm_config(num_sweeps=4)
  # The training wall time of two_block_config's 1,500 steps, previews included: measured with
  # benchmarks/equal_time.py (both train steps in alternating rounds in one process, 2 shared
  # CPU cores, 2026-12-03): 9.4 against 9.3 steps/s, a 100-digit preview 9.5 against 6.6 s
  # (256 network calls against 100); 1,461 and 1,423 steps in two runs.
  config.training.num_steps = 1450
  return config
