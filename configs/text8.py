"""text8, the standard character benchmark (D3PM, SEDD, MDLM, MD4 report on it), with Bit Diffusion.

Data: text8 is the first 100M characters of an English Wikipedia dump normalised to a-z and
space (27 symbols, 5 bits). Download http://mattmahoney.net/dc/text8.zip, unzip it, and pass
--config.data.path=FILE (default data/text8). Splits: the first 90M characters train, the next
5M validate, the last 5M test; windows of 256 characters (as D3PM).
Run:   python main.py --config=configs/text8.py --workdir=runs/text8 --config.data.path=text8
       make eval-text CONFIG=configs/text8.py WORKDIR=runs/text8
Model: a 12-layer Transformer of width 768 (12 heads, MLP 3072, rotary positions; the size the
papers above call small: 86.2M parameters). Hardware: accelerators (the batch shards over every
device and host; --config.training.param_sharding=fsdp splits the weights). Not trained on this
project's machines: no time or result is claimed.
"""

from configs import text


def get_config():
  config = text.get_config()
  config.data.name = 'files'
  config.data.path = 'data/text8'
  config.data.splits = (0.9, 0.05, 0.05)
  config.data.sequence_length = 256

  config.model.width = 768
  config.model.depth = 12
  config.model.mlp_dim = 3072
  config.model.num_heads = 12

  config.optimizer.learning_rate = 3e-4
  config.optimizer.warmup_steps = 2_000
  config.optimizer.decay = 'cosine'
  config.optimizer.ema_decay = 0.9999

  config.training.batch_size = 512
  config.training.num_steps = 1_000_000
  config.training.log_every = 1_000
  config.training.checkpoint_every = 10_000
  config.training.sample_every = 50_000
  config.training.num_grid_samples = 16

  config.sampling.steps = 256
  config.sampling.td = 0.0
  config.sampling.num_samples = 1024
  config.sampling.batch_size = 256

  config.eval.num_samples = 1024
  config.eval.sweep_steps = (64, 256, 1024)
  config.eval.sweep_td = (0.0, 1.0, 4.0)
  return config
