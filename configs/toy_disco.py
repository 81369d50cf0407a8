"""DisCo-Diff on its toy: configs/toy.py plus one learned discrete latent of 8 codes.

Run:   python main.py --config=configs/toy_disco.py --workdir=runs/toy_disco
       python main.py --config=configs/toy_disco.py --workdir=runs/toy_disco --mode=eval
The same data, denoiser, batch and first-stage steps as configs/toy.py; an encoder (3-layer
MLP, as the paper's toy) gives the logits of 1 latent with 8 codes from the clean bits, relaxed
by Gumbel-softmax (temperature 1, straight-through as the authors' code) in training and
dropped to a null embedding 10% of the time.
The last disco.prior_steps steps freeze encoder and denoiser and fit the latent prior (a small
autoregressive Transformer; for one latent, a categorical). Sampling draws a code from the
prior, then runs the ODE conditioned on it.
Hardware and time: 2 shared CPU cores, 190-220 s (24-27 ms a step), eval 110 s with 4,000
points. Result (3 seeds, DPM-Solver++(2M), 50 steps): W2 0.392 (floor 0.291; configs/toy.py
0.356), curvature 10% lower, at 10 steps half the off-mode points; the 8 codes are all used but
do not follow the modes (mutual information 0.40 of log 8). docs/disco.md has the table.
"""

import ml_collections

from configs import toy


def get_config() -> ml_collections.ConfigDict:
  config = toy.get_config()
  config.method = 'disco'
  config.model.encoder_width = 128  # The latent encoder MLP (the paper's toy: 3 layers).
  config.model.encoder_depth = 3

  config.disco = ml_collections.ConfigDict()
  config.disco.num_latents = 1  # m: discrete latents per example (the paper's toy: 1).
  config.disco.codebook_size = 8  # k: codes per latent (the paper's toy: 8).
  config.disco.embedding_dim = 32  # E: width of a code's embedding (the codebook [m, k, E]).
  config.disco.temperature = 1.0  # Gumbel-softmax temperature in training (the paper: 1).
  # Forward the hard one-hot, backward the relaxed gradient (straight-through), as the
  # authors' code (disco-diffdock `gumbel_softmax`); False: the relaxed one-hot forward, whose
  # soft mixtures the denoiser never sees at sampling (measured worse: docs/disco.md).
  config.disco.straight_through = True
  config.disco.latent_dropout = 0.1  # Share trained with the null embedding (the paper: 0.1).
  # How the prior's codes are read off the encoder: 'argmax' (deterministic) or 'sample' (the
  # authors' Gumbel-softmax at temperature 0.01).
  config.disco.extraction = 'argmax'
  # The second stage: the last prior_steps of training.num_steps fit only the prior.
  config.disco.prior_steps = 1000
  # The latent prior, an autoregressive Transformer over the m codes.
  config.disco.prior_width = 32
  config.disco.prior_depth = 1
  config.disco.prior_heads = 2
  config.disco.prior_temperature = 1.0  # Codes drawn from softmax(logits / T) (0: argmax).
  config.disco.guidance = 0.0  # Classifier-free guidance w on the latents at sampling.

  # The first stage as long as configs/toy.py's whole training, then the prior's stage.
  config.training.num_steps = toy.get_config().training.num_steps + config.disco.prior_steps
  return config
