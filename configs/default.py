"""Default hyperparameters of the image task; the image variants change a few fields.

Every image-only field is documented here once, the shared ones in `common.py`. The variants
(`cifar10.py`, `imagenet64.py`, `digits.py`) import `get_config()` and override what differs;
their docstrings say how to run them, on what hardware, how long it takes and what to expect.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 setting (Chen et al. 2023, Sec. 4 and Appendix), unconditional, uint8."""
  config = common.engine_config(task='image', method='bit_diffusion')

  config.data = ml_collections.ConfigDict()
  # 'cifar10' | 'imagenet64' (TFDS), 'digits' (scikit-learn, embedded), 'folder', 'npz', or
  # 'tfds': any TFDS image dataset, named by tfds_name (non-square images: fitted as a folder's).
  config.data.name = 'cifar10'
  config.data.tfds_name = ''  # For 'tfds': e.g. 'mnist', 'cifar100', 'celeb_a'.
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
  # The data's largest value (0: 2**num_bits - 1), checked against the data: shown white in
  # sample grids, 1.0 for the feature nets, and the top of GGM's vocabulary (0..display_max).
  config.data.display_max = 0
  config.data.prefetch = 2  # Batches prepared ahead by a background thread.

  config.bits = common.bits_config()
  config.diffusion = common.diffusion_config()
  # 'bits': the network outputs analog bits. 'softmax': per sub-pixel 2**num_bits logits whose
  # softmax weights the analog codes of all values (the paper's uint8 (rand) model, x0 + l2 only;
  # a 1x1 output convolution, as the authors' code).
  config.diffusion.output = 'bits'
  config.diffusion.label_dropout = 0.0  # Rate of dropped labels, for classifier-free guidance.

  config.model = ml_collections.ConfigDict()
  config.model.base_channels = 256
  config.model.channel_multipliers = (1, 1, 1)  # One stage per entry; 2x downsampling between.
  config.model.num_res_blocks = 3  # Residual blocks per stage.
  config.model.attention_resolutions = (16, 8)  # Feature-map sizes that get self-attention.
  config.model.head_dim = 64  # Channels per attention head (authors' code: channels / 64 heads).
  config.model.dropout = 0.0  # The paper uses 0 for bits.

  config.sampling = common.sampling_config()
  # Classifier-free guidance w: (1 + w) cond - w uncond on the raw network output (authors'
  # code); needs diffusion.label_dropout > 0.
  config.sampling.guidance = 0.0
  config.sampling.labels = ''  # For --mode=sample: '' cycles 0..num_classes-1, or '3,3,7'.

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
