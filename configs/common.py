"""Config sections shared by every task and method; each field is documented here once.

`default.py` (images) and `coco_captioning.py` (captions) build their configs from these
sections and add only the fields their task and method read, so that a field set on the command
line is always one that is used (an unknown field is an error).
"""

import ml_collections


def engine_config(*, task: str, method: str) -> ml_collections.ConfigDict:
  """seed, task, method and the engine's sections: optimizer, training, cpu."""
  config = ml_collections.ConfigDict()
  # Seeds the parameters, the data order, the training noise and the samples (separate streams).
  config.seed = 0
  config.task = task  # What is generated: 'image' | 'captioning' | 'text' | 'points'.
  # How: 'bit_diffusion' | 'autoregressive' (sequence baseline) | 'ggm' (Glauber Generative
  # Model, text and images) | 'disco' (DisCo-Diff: Bit Diffusion with learned discrete latents).
  config.method = method
  config.optimizer = optimizer_config()
  config.training = training_config()
  config.cpu = cpu_config()
  return config


def optimizer_config() -> ml_collections.ConfigDict:
  optimizer = ml_collections.ConfigDict()
  optimizer.learning_rate = 1e-4  # Peak, reached at the end of the warm-up.
  optimizer.warmup_steps = 10_000  # Linear warm-up (authors' code).
  # After the warm-up: 'constant' (paper) or 'cosine' (to 0 at training.num_steps).
  optimizer.decay = 'constant'
  optimizer.b1 = 0.9
  optimizer.b2 = 0.999
  optimizer.weight_decay = 0.0  # > 0 switches Adam to AdamW.
  optimizer.grad_clip_norm = 1.0  # Global-norm clipping; 0 disables.
  optimizer.ema_decay = 0.9999  # EMA of the weights, started from the online weights.
  return optimizer


def training_config() -> ml_collections.ConfigDict:
  training = ml_collections.ConfigDict()
  training.batch_size = 128  # Global batch, split over all devices and hosts.
  training.num_steps = 1_500_000
  training.log_every = 100  # Steps between metric writes.
  training.checkpoint_every = 5_000
  training.max_checkpoints = 3  # Checkpoints kept in WORKDIR/checkpoints.
  training.sample_every = 50_000  # Steps between previews (grids, captions); 0: only at the end.
  training.num_grid_samples = 64  # Samples in each preview (0: no previews).
  # 'replicated': every device holds the whole train state. 'fsdp': parameters, EMA and optimizer
  # state are split over the devices (for models that do not fit one device).
  training.param_sharding = 'replicated'
  # Gradient accumulation: 0 runs the whole global batch in one pass; N > 0 runs it as
  # batch_size / N microbatches of N examples (split evenly over the devices) and averages their
  # gradients before one optimizer step.
  training.microbatch_size = 0
  training.compute_dtype = 'float32'  # 'bfloat16' on accelerators; params stay float32.
  training.compilation_cache = True  # JAX's persistent compile cache in WORKDIR/jax_cache.
  return training


def cpu_config() -> ml_collections.ConfigDict:
  """CPU-only speed-ups (bit_diffusion/cpu.py, measurements in docs/cpu.md); no effect elsewhere."""
  cpu = ml_collections.ConfigDict()
  # The train step's and the samplers' kernels from YNNPACK (XLA:CPU's kernel library): matrix
  # products and reductions; the convolutions stay with XLA's Eigen kernels and the elementwise
  # work with XLA's generated loops. '' = XLA's defaults
  # (INDIVIDUAL_CONVOLUTION,INDIVIDUAL_DOT,REDUCE).
  cpu.ynn_fusions = 'INDIVIDUAL_DOT,REDUCE'
  # The sampler's network runs on microbatches of this many samples in turn (0 = the whole
  # batch): the same samples; small batches keep a CPU's activations in cache.
  cpu.sampler_microbatch_size = 0
  return cpu


def bits_config() -> ml_collections.ConfigDict:
  """How integers are written as analog bits (paper Sec. 2, Table 1)."""
  bits = ml_collections.ConfigDict()
  bits.encoding = 'binary'  # 'binary' | 'gray' | 'permuted' | 'onehot'.
  bits.scale = 1.0  # b: a bit is written as -b or +b.
  bits.permutation_seed = 42  # For 'permuted': numpy seed of the value permutation.
  return bits


def diffusion_config() -> ml_collections.ConfigDict:
  """The Gaussian diffusion on analog bits and its loss (paper Sec. 3, Algorithm 1)."""
  diffusion = ml_collections.ConfigDict()
  # gamma(t): 'cosine' (the paper's default), 'cosine_tau', 'sigmoid' (start, end, tau), 'linear'.
  diffusion.schedule = 'cosine'
  diffusion.schedule_start = 0.0  # For 'cosine_tau' and 'sigmoid'.
  diffusion.schedule_end = 1.0
  diffusion.schedule_tau = 1.0
  diffusion.prediction = 'x0'  # What the network predicts: 'x0' | 'eps' | 'v'.
  # 'l2' | 'logistic' (sigmoid cross-entropy per bit, x0 only) | 'cross_entropy' (of the value
  # under the softmax output's logits; needs output='softmax').
  diffusion.loss = 'l2'
  diffusion.self_condition_rate = 0.5  # Fraction of each batch trained self-conditioned.
  return diffusion


def sampling_config() -> ml_collections.ConfigDict:
  """The reverse process (Algorithm 2) and the sample/eval modes' batches."""
  sampling = ml_collections.ConfigDict()
  sampling.sampler = 'ddim'  # 'ddim' | 'ddpm' | 'dpm2m' (DPM-Solver++(2M), deterministic).
  sampling.steps = 100
  sampling.td = 0.0  # Asymmetric time interval, in sampling steps (paper Sec. 3).
  sampling.ddpm_variance = 'large'  # 'large' (1 - alpha) | 'small' (posterior).
  # Feed the previous x0 estimate back (switched off, with a warning, for a model trained with
  # diffusion.self_condition_rate=0, which never saw one).
  sampling.self_condition = True
  sampling.num_samples = 64  # For --mode=sample.
  sampling.batch_size = 64  # Samples generated per jitted call.
  sampling.use_ema = True  # Sample with the EMA weights.
  # Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
  # x0 = x0_model + w (x0_model - x0_guide), clipped once, where the guide is the same run's
  # checkpoint at `guide_fraction` of training.num_steps (rounded; weights as use_ema): a less
  # trained version of the model. With guide_fraction > 0 training saves that checkpoint and
  # keeps it (beside training.max_checkpoints), so a model trained with autoguidance 0 can be
  # sampled with it later. 0, 0: off.
  sampling.autoguidance = 0.0
  sampling.guide_fraction = 0.0
  # Guidance (classifier-free or autoguidance) only at the steps whose noise level gamma (the
  # signal's share of the variance: 1 clean, 0 noise) lies in [lo, hi] (Kynkaanniemi et al.
  # 2024); elsewhere the model alone, one network pass. (0, 1): every step.
  sampling.guidance_interval = (0.0, 1.0)
  return sampling


def make_autoregressive(config: ml_collections.ConfigDict,
                        temperature: float) -> ml_collections.ConfigDict:
  """`config` (a sequence task's Bit Diffusion config) for the autoregressive baseline: the same
  data and sizes, causal, token cross-entropy; the diffusion-only fields removed; tokens decoded
  at `temperature` (0: greedy)."""
  config.method = 'autoregressive'
  remove_bit_diffusion_fields(config)
  config.sampling.temperature = temperature  # 0: greedy; T > 0: tokens from softmax(z / T).
  return config


def remove_bit_diffusion_fields(config: ml_collections.ConfigDict) -> None:
  """Removes from a Bit Diffusion config the fields only Bit Diffusion reads (analog bits, the
  diffusion, its sampler, guidance and sweep), for another method on the same data. Images keep
  data.num_bits: there it is the data's value range, which the image data checks."""
  for section in ('bits', 'diffusion'):
    del config[section]
  if config.task != 'image':  # Sequences: the bits per token id, derived from the vocabulary.
    del config.data.num_bits
  for field in ('sampler', 'steps', 'td', 'ddpm_variance', 'self_condition', 'infill_method',
                'guidance', 'autoguidance', 'guide_fraction', 'guidance_interval'):
    if field in config.sampling:
      del config.sampling[field]
  for field in ('sweep_steps', 'sweep_td'):
    if field in config.eval:
      del config.eval[field]
  del config.cpu.sampler_microbatch_size


def ggm_config(num_sweeps: int) -> ml_collections.ConfigDict:
  """The Glauber Generative Model's forward process and sampler (bit_diffusion/ggm.py)."""
  ggm = ml_collections.ConfigDict()
  # Sweeps of the forward process over the example's L positions: T = num_sweeps * L steps, one
  # position re-drawn per step in round-robin order; sampling takes T network calls.
  ggm.num_sweeps = num_sweeps
  # Survival of a token after sweep k of num_sweeps: 'cosine' cos(pi/2 (k+1)/num_sweeps) or
  # 'linear' 1 - (k+1)/num_sweeps; the last sweep replaces every token by uniform noise.
  ggm.schedule = 'cosine'
  # Positions hidden and classified per network call, in training and sampling: 1 is the
  # paper's dynamics; k > 1 draws k consecutive positions independently (k times faster).
  ggm.positions_per_call = 1
  # The classifier's token embeddings times 'one' or 'sqrt_width' (Vaswani et al.). At 'one' the
  # time embedding, about 4 times larger, drowns them: on text the classifier then learns no
  # context ('sqrt_width' there); on the digits 'one' scores better (docs/reference.md, "GGM
  # reads its context").
  ggm.token_scale = 'one'
  return ggm
