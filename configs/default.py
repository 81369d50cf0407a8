"""Default hyperparameters shared by every image config; the variants change a few fields.

Every field is documented here once. The variants (`cifar10.py`, `imagenet64.py`, `digits.py`)
import `get_config()` and override what differs; their docstrings say how to run them, on what
hardware, how long it takes and what to expect.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 setting (Chen et al. 2023, Sec. 4 and Appendix), unconditional, uint8."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameters, data order, diffusion noise and samples.
  config.task = 'image'  # 'image' | 'captioning' (configs/*_captioning*.py); picks the trainer.

  config.data = ml_collections.ConfigDict()
  # 'cifar10' | 'imagenet64' (TFDS), 'digits' (scikit-learn, embedded), 'folder', 'npz'.
  config.data.name = 'cifar10'
  config.data.data_dir = ''  # TFDS data_dir ('' = TFDS default, ~/tensorflow_datasets).
  # TFDS datasets missing from data_dir: build them on first use (needs network; fails at once
  # with instructions when the download host is unreachable). False: only the error.
  config.data.download = True
  config.data.path = ''  # For 'folder' (a directory of images) and 'npz' (a file).
  config.data.image_size = 32  # Height = width in pixels, checked against the data.
  config.data.channels = 3  # 3 for RGB, 1 for grey; checked against the data.
  config.data.num_bits = 8  # Bits per sub-pixel value; values must lie in [0, 2**num_bits).
  config.data.random_flip = True  # Random horizontal flips (the paper's only augmentation).
  config.data.class_conditional = False  # Feed labels to the model (needs labelled data).
  config.data.num_classes = 10  # Number of labels when class_conditional.
  config.data.display_max = 0  # Value shown white in sample grids (0: 2**num_bits - 1).
  config.data.prefetch = 2  # Batches prepared ahead by a background thread.

  config.bits = ml_collections.ConfigDict()
  config.bits.encoding = 'binary'  # 'binary' | 'gray' | 'permuted' | 'onehot' (paper Table 1).
  config.bits.scale = 1.0  # b: a bit is written as -b or +b.
  config.bits.permutation_seed = 42  # For 'permuted': numpy seed of the value permutation.

  config.diffusion = ml_collections.ConfigDict()
  # gamma(t): 'cosine' (the paper's default), 'cosine_tau', 'sigmoid' (start, end, tau), 'linear'.
  config.diffusion.schedule = 'cosine'
  config.diffusion.schedule_start = 0.0  # For 'cosine_tau' and 'sigmoid'.
  config.diffusion.schedule_end = 1.0
  config.diffusion.schedule_tau = 1.0
  config.diffusion.prediction = 'x0'  # What the network predicts: 'x0' | 'eps' | 'v'.
  config.diffusion.loss = 'l2'  # 'l2' | 'logistic' (sigmoid cross-entropy per bit, x0 only).
  # 'bits': the network outputs analog bits. 'softmax': per sub-pixel 2**num_bits logits whose
  # softmax weights the analog codes of all values (the paper's uint8 (rand) model, x0 + l2 only).
  config.diffusion.output = 'bits'
  config.diffusion.self_condition_rate = 0.5  # Fraction of each batch trained self-conditioned.
  config.diffusion.label_dropout = 0.0  # Rate of dropped labels, for classifier-free guidance.

  config.model = ml_collections.ConfigDict()
  config.model.base_channels = 256
  config.model.channel_multipliers = (1, 1, 1)  # One stage per entry; 2x downsampling between.
  config.model.num_res_blocks = 3  # Residual blocks per stage.
  config.model.attention_resolutions = (16, 8)  # Feature-map sizes that get self-attention.
  config.model.num_heads = 1
  config.model.dropout = 0.0  # The paper uses 0 for bits.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-4  # Constant after warm-up (paper).
  config.optimizer.warmup_steps = 10_000  # Linear warm-up (authors' code).
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 0.0  # > 0 switches Adam to AdamW.
  config.optimizer.grad_clip_norm = 1.0  # Global-norm clipping; 0 disables.
  config.optimizer.ema_decay = 0.9999  # EMA of the weights, started from the online weights.

  config.training = ml_collections.ConfigDict()
  config.training.batch_size = 128  # Global batch, split over all devices and hosts.
  config.training.num_steps = 1_500_000
  config.training.log_every = 100  # Steps between metric writes.
  config.training.checkpoint_every = 5_000
  config.training.max_checkpoints = 3  # Checkpoints kept in WORKDIR/checkpoints.
  config.training.sample_every = 50_000  # Steps between sample grids (0: only at the end).
  config.training.num_grid_samples = 64  # Images in each periodic sample grid (0: no grids).
  # 'replicated': every device holds the whole train state. 'fsdp': parameters, EMA and optimizer
  # state are split over the devices (for models that do not fit one device).
  config.training.param_sharding = 'replicated'
  # Gradient accumulation: 0 runs the whole global batch in one pass; N > 0 runs it as
  # batch_size / N microbatches of N examples (split evenly over the devices) and averages their
  # gradients before one optimizer step. With transparent huge pages (main.py's default) no
  # faster on this project's CPU than one pass, and XLA:CPU keeps all microbatches' activations,
  # so no memory is saved there (README, Several devices and Benchmarks).
  config.training.microbatch_size = 0
  # On CPU, the train step's kernels from YNNPACK (XLA:CPU's kernel library); the convolutions
  # stay with XLA's Eigen kernels (10-15% faster here, README Benchmarks). '' = XLA's defaults
  # (INDIVIDUAL_CONVOLUTION,INDIVIDUAL_DOT,REDUCE). No effect on GPU/TPU.
  config.training.cpu_ynn_fusions = 'INDIVIDUAL_DOT,REDUCE,ELTWISE'
  config.training.compute_dtype = 'float32'  # 'bfloat16' on accelerators; params stay float32.
  config.training.compilation_cache = True  # JAX's persistent compile cache in WORKDIR/jax_cache.

  config.sampling = ml_collections.ConfigDict()
  config.sampling.sampler = 'ddim'  # 'ddim' | 'ddpm'.
  config.sampling.steps = 100
  config.sampling.td = 0.0  # Asymmetric time interval, in sampling steps (paper Sec. 3).
  config.sampling.ddpm_variance = 'large'  # 'large' (1 - alpha) | 'small' (posterior).
  config.sampling.guidance = 0.0  # w in (1 + w) cond - w uncond; needs label_dropout > 0.
  config.sampling.self_condition = True  # Feed the previous x0 estimate (if trained with it).
  config.sampling.num_samples = 64  # For --mode=sample.
  config.sampling.batch_size = 64  # Samples generated per jitted call.
  # Run each network evaluation on microbatches of this many images in turn (0 = the whole
  # batch): the same samples; on a CPU 4-8 is fastest (README, Benchmarks).
  config.sampling.microbatch_size = 0
  config.sampling.labels = ''  # For --mode=sample: '' cycles 0..num_classes-1, or '3,3,7'.
  config.sampling.use_ema = True  # Sample with the EMA weights.

  config.eval = ml_collections.ConfigDict()
  config.eval.num_batches = 10  # --mode=eval: batches of the diffusion loss with fixed noise.
  config.eval.batch_size = 0  # 0: training.batch_size.
  # Sample metrics of --mode=eval (FID, Inception Score, k-NN precision/recall; README "FID").
  config.eval.num_samples = 50_000  # Samples generated (paper: 50K); 0 skips the sample metrics.
  # 'inception': the FID Inception-v3 (pool3, 2048 features; the paper's, needs its weights).
  # 'digits': the features of a small classifier trained once on the embedded digits.
  config.eval.feature_net = 'inception'
  # 'train': statistics of the whole training set (paper). 'half': of a fixed half B, the other
  # half A giving the real-against-real floor (for small datasets).
  config.eval.reference = 'train'
  config.eval.reference_stats = ''  # A stored reference .npz ('': computed once into the cache).
  # Converted FID Inception weights (.npz; tools/convert_inception_weights.py), or the
  # pytorch-fid .pth (converted when PyTorch is installed). '': CACHE_DIR/pt_inception-*.npz.
  config.eval.inception_weights = ''
  # Weights, reference statistics, digits classifier. '': $BIT_DIFFUSION_CACHE, else
  # ~/.cache/bit_diffusion.
  config.eval.cache_dir = ''
  config.eval.download = True  # Download the Inception .pth when missing (fails at once offline).
  config.eval.feature_batch_size = 100  # Images per feature-network call (over all devices).
  config.eval.max_real_features = 10_000  # Real feature vectors kept for precision/recall.
  config.eval.pr_k = 3  # k of the k-NN precision/recall (Kynkaanniemi et al. 2019).
  config.eval.is_splits = 10  # Inception Score: mean and std over this many splits.
  return config
