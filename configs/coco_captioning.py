"""MS-COCO captioning with Bit Diffusion: the paper's setting (Sec. 4.3, Table 3: BLEU-4 34.7).

Run:   make tokenizer CONFIG=configs/coco_captioning.py    (writes tokenizer.path)
       python main.py --config=configs/coco_captioning.py --workdir=runs/coco_caption
       make eval-caption CONFIG=configs/coco_captioning.py WORKDIR=runs/coco_caption
Data: TFDS `coco_captions` (Karpathy splits; `--config.data.data_dir=DIR` where it is built), or
a COCO captions file: --config.data.name=coco_json --config.data.annotations=captions_train.json
--config.data.image_dir=train2014/ (and eval_annotations / eval_image_dir for scoring).
Model: ViT-B/16 encoder at 384x384 (initialise it from a big_vision / AugReg .npz with
--config.model.vit_checkpoint=FILE; the paper's encoder was pretrained for detection) and the
paper's decoder: 6 layers, width 512, non-causal. 32K SentencePiece pieces = 15 bits per token,
64 tokens. Hardware: accelerators; not trained on this project's CPU machines.

This file is also the base of the other captioning configs: every captioning field is here.
Captioning configs hold only the fields captioning reads.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.engine_config(task='captioning', method='bit_diffusion')

  config.data = ml_collections.ConfigDict()
  config.data.name = 'coco_captions'  # 'coco_captions' (TFDS) | 'coco_json' | 'shapes'.
  config.data.data_dir = ''  # TFDS data_dir ('' = TFDS default).
  config.data.download = False  # Let TFDS download coco_captions (about 38 GB) if missing.
  config.data.train_split = 'train+restval'  # TFDS splits (Karpathy).
  config.data.eval_split = 'test'
  config.data.annotations = ''  # coco_json: the training captions file ...
  config.data.image_dir = ''  # ... and its images (file_name is relative to it).
  config.data.eval_annotations = ''  # coco_json: the held-out captions file and images.
  config.data.eval_image_dir = ''
  config.data.num_test = 500  # shapes: held-out scenes.
  config.data.image_size = 384  # Images are made square, image_size pixels a side, by ...
  # ... 'pad': the whole image, its longer side resized to image_size and padded at the bottom or
  # right (with pix2seq's grey 0.3), as the authors' preprocessing; or 'crop': the shorter side
  # resized, the centre cropped (a 4:3 photo loses a quarter of its width).
  config.data.resize = 'pad'
  config.data.num_bits = 0  # Bits per token; 0 = ceil(log2(vocab)) of the tokenizer.
  config.data.prefetch = 2  # Batches prepared ahead by a background thread.

  config.tokenizer = ml_collections.ConfigDict()
  config.tokenizer.path = 'runs/tokenizers/coco_32k.model'  # '' = train one at start-up.
  config.tokenizer.vocab_size = 32_000  # For training one (make tokenizer, or path '').
  config.tokenizer.model_type = 'unigram'  # SentencePiece 'unigram' | 'bpe'.
  config.tokenizer.max_length = 64  # Tokens per caption, EOS and padding included.

  config.bits = common.bits_config()
  config.diffusion = common.diffusion_config()

  config.model = ml_collections.ConfigDict()
  config.model.vit_checkpoint = ''  # A big_vision / AugReg ViT .npz to start the encoder from.
  config.model.patch_size = 16
  config.model.encoder_width = 768  # ViT-B.
  config.model.encoder_depth = 12
  config.model.encoder_mlp_dim = 3072
  config.model.encoder_heads = 12
  config.model.width = 512  # The paper's decoder: 6 layers of width 512.
  config.model.depth = 6
  config.model.mlp_dim = 2048
  config.model.num_heads = 8

  config.optimizer.learning_rate = 1e-4
  config.optimizer.warmup_steps = 5_000
  config.optimizer.weight_decay = 0.05

  config.training.batch_size = 256
  config.training.num_steps = 200_000
  config.training.checkpoint_every = 5_000
  config.training.sample_every = 10_000
  config.training.num_grid_samples = 64  # Held-out images captioned at each preview.

  config.sampling = common.sampling_config()
  config.sampling.steps = 20  # Table 3.
  config.sampling.td = 7.0  # Table 4: td 5..8 is best at 20 steps.
  config.sampling.num_samples = 5000  # Held-out images captioned by --mode=sample.
  config.sampling.batch_size = 100

  config.eval = ml_collections.ConfigDict()
  config.eval.num_images = 5000  # Held-out images scored by --mode=eval (0: all).
  config.eval.sweep_steps = (5, 10, 20, 40)  # --mode=eval scores every steps x td (Table 4).
  config.eval.sweep_td = (0.0, 1.0, 2.0, 4.0, 8.0)
  # Held-out captions with one token removed and filled (captioning/infill.py); 0 skips it.
  config.eval.infill_captions = 500
  return config


def make_autoregressive(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` for the autoregressive baseline: the same data, encoder and decoder sizes, a causal
  decoder, token cross-entropy and greedy decoding; the diffusion-only fields removed."""
  return common.make_autoregressive(config, temperature=0.0)
