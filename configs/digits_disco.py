"""DisCo-Diff on the digits: configs/digits.py plus 2 learned discrete latents of 16 codes each.

Run:   python main.py --config=configs/digits_disco.py --workdir=runs/digits_disco
       python main.py --config=configs/digits_disco.py --workdir=runs/digits_disco --mode=eval
       python tools/disco_latents.py --config=configs/digits_disco.py \
           --workdir=runs/digits_disco   # code histogram, one-code-per-row grid, ms per sample
The same data, U-Net, batch, optimizer and 1,500 first-stage steps as digits.two_block_config()
(configs/digits.py until 2026-12-04: 2 residual blocks per stage); a convolutional encoder (2 layers
of 32 channels) gives the logits of the latents from the clean bits, relaxed by straight-through
Gumbel-softmax (temperature 1) in training and dropped to a null embedding 10% of the time. A
1-layer Transformer of width 64 turns the latents into 2 tokens, which the U-Net reads by cross-
attention after each self-attention (the 4x4 stage), as the paper (`bit_diffusion/latent_unet.py`).
The last 300 steps fit the latent prior only.
Why m = 2, k = 16: 16 >= 10 codes let one latent name the class where no labels are given
(configs/digits_uncond_disco.py); 256 code pairs for 1,797 images (about 7 each) keep every
pair trainable and the prior (p(z1) p(z2 | z1), 16 + 256 cells) fittable from the data, while
leaving room for style (slant, stroke width) beyond the class. The paper: m = 10, k = 100 for
ImageNet's 1.28M images.
Hardware and time (2 shared AVX-512 EPYC cores, other jobs running): 542 s for the 1,800 steps
(digits.two_block_config(): 342 s), eval 30-120 s per sampler setting. Result (seed 0, 898 samples,
digits features): FID 10.06 at DDIM 100, 10.62 at DPM-Solver++(2M) 25 (two_block_config: 6.03,
6.46): with labels the latents hurt; 4 code pairs used. docs/disco.md "Digits" has the table.
"""

import ml_collections

from configs import digits


def add_disco(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A digits config (conditional or not) turned into DisCo-Diff's: its fields, 300 more steps."""
  config.method = 'disco'
  config.model.encoder_width = 32  # The convolutional latent encoder: channels ...
  config.model.encoder_depth = 2  # ... and layers (a 3x3 conv, then stride-2 3x3 convs).
  config.model.latent_width = 64  # The Transformer over the latents: width of its tokens,
  config.model.latent_depth = 1  # its layers,
  config.model.latent_heads = 2  # its heads.
  # Deviation from the paper: also add the projected mean token to the noise embedding. With
  # labels it measured better (FID 7.91 at DDIM 100 against 10.06; no latents: 6.03) and its
  # codes never collapsed; off here, the paper's form (docs/disco.md "Digits").
  config.model.latent_pooled = False

  config.disco = ml_collections.ConfigDict()
  config.disco.num_latents = 2  # m: discrete latents per image (docstring: why).
  config.disco.codebook_size = 16  # k: codes per latent.
  config.disco.embedding_dim = 32  # E: width of a code's embedding (the codebook [m, k, E]).
  config.disco.temperature = 1.0  # Gumbel-softmax temperature in training (the paper: 1).
  config.disco.straight_through = True  # Hard one-hot forward, relaxed gradient (docs/disco.md).
  config.disco.latent_dropout = 0.1  # Share trained with the null embedding (the paper: 0.1).
  config.disco.extraction = 'argmax'  # The prior's codes: the encoder's argmax.
  config.disco.prior_steps = 300  # The second stage: the last steps fit only the prior.
  config.disco.prior_width = 32  # The latent prior, an autoregressive Transformer.
  config.disco.prior_depth = 1
  config.disco.prior_heads = 2
  config.disco.prior_temperature = 1.0  # Codes drawn from softmax(logits / T) (0: argmax).
  config.disco.guidance = 0.0  # Classifier-free guidance w on the latents at sampling.

  # The first stage as long as the plain config's whole training, then the prior's stage.
  config.training.num_steps += config.disco.prior_steps
  config.training.checkpoint_every = config.training.num_steps // 2
  config.training.sample_every = config.training.num_steps // 2
  return config


def get_config() -> ml_collections.ConfigDict:
  return add_disco(digits.two_block_config())
