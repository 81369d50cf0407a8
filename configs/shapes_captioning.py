"""The embedded captioning default: coloured shapes the project renders itself, no download.

Run:   python main.py --config=configs/shapes_captioning.py --workdir=runs/shapes_caption
       make eval-caption      (scores runs/shapes_caption: BLEU-4, CIDEr, ROUGE-L, steps x td)
Data: 7,735 training scenes of one or two shapes (3 shapes x 5 colours x 9 places) at 48x48,
three phrasings each; 500 held-out scenes are scored (`bit_diffusion/captioning/scenes.py`). A
BPE tokenizer of 96 pieces is trained at start-up on the training captions: 7 bits per token,
20 tokens per caption.
Model: ViT (patch 16, i.e. one patch per grid cell, 2 layers, width 128) and a non-causal
decoder (3 layers, width 128); 0.94M parameters.
Hardware and time: 2 CPU cores shared with other jobs (load average 7-8), 3,000 steps in 18 min
42 s wall. Expect on the 500 held-out scenes, 20 DDIM steps, td 2: BLEU-4 0.997, CIDEr 5.73,
ROUGE-L 0.994, 97.8% exact-match captions (README "Image captioning" has the steps x td table).
"""

from configs import coco_captioning


def get_config():
  config = coco_captioning.get_config()
  config.data.name = 'shapes'
  config.data.image_size = 48
  config.data.num_test = 500

  config.tokenizer.path = ''  # Trained at start-up (well under a second).
  config.tokenizer.vocab_size = 96
  config.tokenizer.model_type = 'bpe'  # Whole words on this tiny corpus (unigram stays subword).
  config.tokenizer.max_length = 20  # Longest caption: 17 pieces + EOS.

  config.model.patch_size = 16  # 3x3 patches: one per cell of the scene grid.
  config.model.encoder_width = 128
  config.model.encoder_depth = 2
  config.model.encoder_mlp_dim = 256
  config.model.encoder_heads = 4
  config.model.width = 128
  config.model.depth = 3
  config.model.mlp_dim = 256
  config.model.num_heads = 4

  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 200
  config.optimizer.weight_decay = 0.0
  config.optimizer.ema_decay = 0.995  # Short run: an EMA that keeps up.

  config.training.batch_size = 128
  config.training.num_steps = 3000
  config.training.log_every = 100
  config.training.checkpoint_every = 500
  config.training.sample_every = 500
  config.training.num_grid_samples = 100

  config.sampling.steps = 20
  config.sampling.td = 2.0
  config.sampling.num_samples = 500
  config.sampling.batch_size = 250

  config.eval.num_images = 500
  config.eval.sweep_steps = (5, 10, 20)
  config.eval.sweep_td = (0.0, 1.0, 2.0, 4.0)
  return config
