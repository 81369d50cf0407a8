"""One Billion Word (lm1b) with word pieces and Bit Diffusion, for accelerators.

Data: TFDS `lm1b` (30M training sentences; build it where there is network with
`tfds build lm1b --data_dir=DIR` and pass --config.data.data_dir=DIR). Sentences are encoded by a
32K-piece SentencePiece model (15 bits per token), each followed by EOS, packed into windows of
128 tokens. The tokenizer is trained at start-up on the first 1M training sentences, or read from
--config.tokenizer.path.
Run:   python main.py --config=configs/lm1b.py --workdir=runs/lm1b --config.data.data_dir=DIR
       make eval-text CONFIG=configs/lm1b.py WORKDIR=runs/lm1b
Model: a 12-layer Transformer of width 768. Not trained on this project's machines: no time or
result is claimed. For the generative perplexity the evaluator is a 4-gram model (15-bit ids:
higher orders do not fit the n-gram keys).
"""

from configs import text


def get_config():
  config = text.get_config()
  config.data.name = 'lm1b'
  config.data.sequence_length = 128

  config.tokenizer.kind = 'sentencepiece'
  config.tokenizer.vocab_size = 32_000
  config.tokenizer.model_type = 'unigram'
  config.tokenizer.train_lines = 1_000_000

  config.model.width = 768
  config.model.depth = 12
  config.model.mlp_dim = 3072
  config.model.num_heads = 12

  config.optimizer.learning_rate = 3e-4
  config.optimizer.warmup_steps = 2_000
  config.optimizer.ema_decay = 0.9999

  config.training.batch_size = 512
  config.training.num_steps = 1_000_000
  config.training.log_every = 1_000
  config.training.checkpoint_every = 10_000
  config.training.sample_every = 50_000
  config.training.num_grid_samples = 16

  config.sampling.steps = 128
  config.sampling.num_samples = 1024
  config.sampling.batch_size = 256

  config.eval.num_samples = 1024
  config.eval.sweep_steps = (32, 128, 512)
  config.eval.sweep_td = (0.0, 1.0, 4.0)
  config.eval.evaluator_order = 4
  return config
