"""Training images as integer arrays: the image task's data sources.

A *source* gives random access to the examples of a dataset (`get(indices)`);
`batches.BatchIterator` turns it into a resumable, host-sharded stream of batches.

Sources: 'digits' (scikit-learn's bundled 8x8 digits), 'npz', 'folder' (images decoded lazily),
and TFDS: 'cifar10', 'imagenet64' (`imagenet_resized/64x64`) or any TFDS image dataset ('tfds'
with `data.tfds_name`, e.g. 'mnist', 'cifar100', 'celeb_a'). A TFDS dataset whose images take
up to `TFDS_IN_MEMORY_BYTES` at `data.image_size` is loaded into memory; a larger one is read
with random access from its array_record files, never loaded whole. Non-square or varying-size
images are fitted to `data.image_size` as they are read (as a folder's: `image_files`).
"""

import dataclasses
import importlib.util
import os
import urllib.parse
import urllib.request

import jax
import numpy as np

from bit_diffusion import batches
from bit_diffusion import downloads
from bit_diffusion import image_files

# TFDS image datasets up to this size (images' bytes) are loaded into memory (CIFAR-10: 150 MB);
# larger ones (ImageNet 64x64: 15.7 GB) are read with random access.
TFDS_IN_MEMORY_BYTES = 2 * 1024**3


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model needs to know about the training data."""
  name: str
  num_examples: int
  image_size: int
  channels: int
  num_bits: int
  num_classes: int  # 0: the data has no labels.
  class_names: tuple[str, ...] = ()  # Label i is class_names[i], when known.


class ArraySource:
  """Examples held in memory: images int [N, H, W, C], labels int32 [N]."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.images)

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {'images': self.images[indices], 'labels': self.labels[indices]}


class TfdsRandomAccessSource:
  """A TFDS data source (array_record): examples read and decoded on demand; `has_labels`: the
  examples have a 'label' (else every label is 0); `fit_size`: images are fitted to that square
  size by `image_files.fit_array` (for non-square images; 0: taken as they are)."""

  def __init__(self, data_source, has_labels: bool = True, fit_size: int = 0):
    self.data_source, self.has_labels, self.fit_size = data_source, has_labels, fit_size

  def __len__(self) -> int:
    return len(self.data_source)

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    keys = [int(i) for i in indices]
    get_many = getattr(self.data_source, '__getitems__', None)  # Batched, parallel reads.
    examples = get_many(keys) if get_many else [self.data_source[k] for k in keys]
    labels = [ex['label'] if self.has_labels else 0 for ex in examples]
    images = [ex['image'] for ex in examples]
    if self.fit_size:
      images = [image_files.fit_array(im, self.fit_size) for im in images]
    return {'images': np.stack(images), 'labels': np.array(labels, np.int32)}


# ---------------------------------------------------------------------------------------------
# Sources.


def create_source(data_config) -> tuple[batches.Source, DatasetInfo]:
  """Opens `data_config.name` and checks it against the config (sizes, bits, labels)."""
  name = data_config.name
  if name == 'digits':
    source, num_classes, class_names = _digits_source(data_config)
  elif name == 'npz':
    source, num_classes, class_names = _npz_source(data_config)
  elif name == 'folder':
    source, num_classes, class_names = image_files.folder_source(data_config)
  elif name in _TFDS_DATASETS or name == 'tfds':
    source, num_classes, class_names = _tfds_source(data_config)
    name = _tfds_name(data_config) if name == 'tfds' else name  # For messages and the info.
  else:
    raise ValueError(f"Unknown data.name {name!r}: use 'cifar10', 'imagenet64', 'digits', "
                     "'folder', 'npz', or 'tfds' with data.tfds_name (any TFDS image dataset).")
  if len(source) == 0:
    raise ValueError(f'Dataset {name!r} has no examples.')
  top = data_config.get('display_max', 0)
  if not isinstance(source, ArraySource) and top not in (0, 2**data_config.num_bits - 1):
    raise ValueError(f'data.display_max={top} declares the largest value of the data, but the '
                     f'{name!r} images are decoded as they are read (8-bit, up to 255) and '
                     'cannot be checked against it: set it to 0.')
  if data_config.class_conditional:
    if num_classes == 0:
      raise ValueError(f'data.class_conditional=True but dataset {name!r} has no labels. Set '
                       '--config.data.class_conditional=False (or, for a folder, put the images '
                       'of each class in its own subfolder).')
    if num_classes > data_config.num_classes:
      raise ValueError(f'Dataset {name!r} has labels 0..{num_classes - 1} but data.num_classes='
                       f'{data_config.num_classes}. Set --config.data.num_classes={num_classes}.')
  info = DatasetInfo(name=name, num_examples=len(source), image_size=data_config.image_size,
                     channels=data_config.channels, num_bits=data_config.num_bits,
                     num_classes=num_classes, class_names=tuple(class_names))
  return source, info


def _array_source(images, labels, data_config, what: str) -> ArraySource:
  """Checks images int [N, H, W, C] against the config and stores them compactly."""
  size, channels, num_bits = data_config.image_size, data_config.channels, data_config.num_bits
  if not np.issubdtype(images.dtype, np.integer):
    raise ValueError(f'{what}: images have dtype {images.dtype}; integer values in '
                     f'[0, 2**num_bits) are required (e.g. uint8 for 8-bit images).')
  if images.shape[1:] != (size, size, channels):
    raise ValueError(f'{what}: images have shape [H, W, C] = {list(images.shape[1:])} but the '
                     f'config asks for [{size}, {size}, {channels}]. Set --config.data.image_size '
                     'and --config.data.channels to match, or resize the data.')
  flat = images.reshape(len(images), -1)
  low, high = flat.min(axis=1), flat.max(axis=1)  # [N]
  bad = np.flatnonzero((low < 0) | (high >= 2**num_bits))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f'{what}: example {i} has values in [{low[i]}, {high[i]}], outside '
                     f'[0, 2**num_bits) = [0, {2**num_bits}) ({bad.size} examples out of range). '
                     f'Set --config.data.num_bits={max(1, int(high.max()).bit_length())} or '
                     'rescale the data.')
  top = data_config.get('display_max', 0)  # 0: 2**num_bits - 1, checked above.
  bad = np.flatnonzero(high > top) if top else np.array([], np.int64)
  if bad.size:
    i = int(bad[0])
    raise ValueError(f'{what}: example {i} has values up to {high[i]}, above '
                     f'data.display_max={top}, the largest value the config declares (white in '
                     "the grids, 1.0 for the feature nets, the top of GGM's vocabulary; "
                     f'{bad.size} examples above it). Set --config.data.display_max='
                     f'{int(high.max())}, or 0 for 2**num_bits - 1.')
  dtype = np.uint8 if num_bits <= 8 else np.uint16 if num_bits <= 16 else np.int32
  if labels is None:
    labels = np.zeros(len(images), np.int32)
  return ArraySource(images.astype(dtype), labels.astype(np.int32))


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1797 handwritten digits, bundled with it (no download): images int64
  [1797, 8, 8] with values 0..16, labels int64 [1797] with values 0..9.

  Reads the file that `sklearn.datasets.load_digits` reads, `sklearn/datasets/data/
  digits.csv.gz` (64 pixels then the label per row), without importing `sklearn.datasets`, whose
  import (scipy.stats and more) costs about a second in every process; if that file is not
  there (another scikit-learn layout), it asks `load_digits`. tests/test_input_pipeline.py checks
  that both give the same arrays.
  """
  spec = importlib.util.find_spec('sklearn')  # Locates the package without importing it.
  path = None
  if spec is not None and spec.submodule_search_locations:
    path = os.path.join(spec.submodule_search_locations[0], 'datasets', 'data', 'digits.csv.gz')
  if path is None or not os.path.isfile(path):
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.images.astype(np.int64), digits.target.astype(np.int64)
  table = np.loadtxt(path, delimiter=',')
  return table[:, :-1].astype(np.int64).reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def _digits_source(data_config):
  """scikit-learn's 1797 handwritten digits: 8x8 grey, values 0..16, labels 0..9."""
  images, labels = load_sklearn_digits()
  source = _array_source(images[..., None], labels, data_config, 'digits')  # [1797, 8, 8, 1]
  return source, 10, [str(d) for d in range(10)]


def _npz_source(data_config):
  """An .npz file with 'images' [N, H, W(, C)] and optional 'labels' [N]."""
  path = data_config.path
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f'npz file {path!r} not found. Set --config.data.path to an .npz file '
                            "with 'images' [N, H, W, C] or [N, H, W] and optional 'labels' [N].")
  with np.load(path, allow_pickle=False) as npz:
    if not hasattr(npz, 'files') or 'images' not in npz.files:
      keys = getattr(npz, 'files', 'none (not an .npz archive)')
      raise ValueError(f"{path}: no 'images' array (keys: {keys}). Save the data with "
                       'np.savez(path, images=..., labels=...).')
    try:
      images = npz['images']
      labels = npz['labels'] if 'labels' in npz.files else None
    except ValueError as e:  # Object arrays: numpy would need pickle, which is never used here.
      raise ValueError(f'{path}: holds Python objects, which would have to be unpickled; '
                       'nothing is loaded with pickle. Save plain integer arrays with '
                       'np.savez(path, images=..., labels=...).') from e
  if images.ndim == 3:
    images = images[..., None]  # Grey [N, H, W] -> [N, H, W, 1].
  if images.ndim != 4:
    raise ValueError(f"{path}: 'images' has shape {images.shape}; expected [N, H, W, C] or "
                     '[N, H, W].')
  num_classes = 0
  if labels is not None:
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"{path}: 'labels' must be integers of shape [{len(images)}], got "
                       f'{labels.dtype} {labels.shape}.')
    if len(labels) and labels.min() < 0:
      raise ValueError(f'{path}: example {int(np.argmin(labels))} has a negative label '
                       f'{labels.min()}; labels must be 0..K-1.')
    num_classes = int(labels.max()) + 1 if len(labels) else 0
  source = _array_source(images, labels, data_config, path)
  return source, num_classes, [str(k) for k in range(num_classes)]


# TFDS name, the host its builder downloads from (probed before any download attempt), and the
# train split's size.
_TFDS_DATASETS = {
    'cifar10': ('cifar10', 'www.cs.toronto.edu', 50_000),
    'imagenet64': ('imagenet_resized/64x64', 'www.image-net.org', 1_281_167),
}


def _tfds_name(data_config) -> str:
  """The TFDS name of `data.name` ('cifar10', 'imagenet64', or 'tfds' with `data.tfds_name`)."""
  if data_config.name in _TFDS_DATASETS:
    return _TFDS_DATASETS[data_config.name][0]
  tfds_name = data_config.get('tfds_name', '')
  if not tfds_name:
    raise ValueError("data.name='tfds' needs the dataset's TFDS name: set "
                     "--config.data.tfds_name (e.g. 'mnist', 'cifar100', 'svhn_cropped', "
                     "'imagenet_resized/32x32').")
  return tfds_name


def _tfds_source(data_config):
  """A TFDS image dataset from TFDS's data_dir: into memory when small (CIFAR-10), else random
  access (ImageNet 64x64). Its 'image' feature is the image, its 'label' (if any) the class."""
  import tensorflow_datasets as tfds  # Imported here: it is slow and only these sources need it.

  tfds_name = _tfds_name(data_config)
  try:
    builder = tfds.builder(tfds_name, data_dir=data_config.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f'TFDS has no dataset {tfds_name!r}, and data_dir '
                     f'({data_config.data_dir or "the TFDS default"}) holds none of that name. '
                     'Set --config.data.tfds_name to a name of the TFDS catalogue '
                     '(https://www.tensorflow.org/datasets/catalog), e.g. mnist.') from e
  if not builder.is_prepared():
    host = (_TFDS_DATASETS[data_config.name][1] if data_config.name in _TFDS_DATASETS
            else _download_host(builder))
    _download_and_prepare(builder, tfds_name, host, data_config)
  features = builder.info.features
  image = features['image'] if 'image' in features else None
  if not isinstance(image, tfds.features.Image):
    raise ValueError(f"{tfds_name} has no 'image' feature of images (its features: "
                     f'{", ".join(features)}); only TFDS image datasets can be used.')
  image_shape = tuple(image.shape)
  size, channels = data_config.image_size, data_config.channels
  # Not square, or of varying size (None): fitted to image_size as a folder's images are.
  fit = None in image_shape[:2] or image_shape[0] != image_shape[1]
  if image_shape[2] != channels:
    raise ValueError(f'{tfds_name} images have {image_shape[2]} channels but the config asks '
                     f'for {channels}. Set --config.data.channels={image_shape[2]}.')
  if not fit and image_shape != (size, size, channels):
    raise ValueError(f'{tfds_name} images are {list(image_shape)} but the config asks for '
                     f'[{size}, {size}, {channels}]. Set --config.data.image_size='
                     f'{image_shape[0]} --config.data.channels={image_shape[2]}.')
  if data_config.num_bits < 8:
    raise ValueError(f'{tfds_name} has 8-bit images but data.num_bits={data_config.num_bits}. '
                     'Set --config.data.num_bits=8.')
  label = features['label'] if 'label' in features else None
  if not isinstance(label, tfds.features.ClassLabel):
    label = None  # No labels, or labels that are not classes: unconditional only.
  num_classes, class_names = (label.num_classes, label.names) if label else (0, [])
  fits_in_memory = lambda n: n * size * size * channels <= TFDS_IN_MEMORY_BYTES
  num_examples = _train_examples(builder, data_config)
  random_access = tfds.core.FileFormat.with_random_access()
  if (not builder.info.available_file_formats() & random_access
      and (num_examples is None or fits_in_memory(num_examples))):
    # tfrecord files: read with tf.data (batch_size=-1 aborts the process under mock_data), in
    # batches, or one by one when images of other shapes are fitted as they are read.
    if fit:
      examples = list(tfds.as_numpy(builder.as_dataset(split='train')))
      images = np.stack([image_files.fit_array(ex['image'], size) for ex in examples])
      labels = np.array([ex['label'] for ex in examples]) if label else None
    else:
      chunks = list(tfds.as_numpy(builder.as_dataset(split='train', batch_size=1024)))
      images = np.concatenate([c['image'] for c in chunks])
      labels = np.concatenate([c['label'] for c in chunks]) if label else None
    return _array_source(images, labels, data_config, tfds_name), num_classes, class_names
  try:
    data_source = builder.as_data_source(split='train')
  except NotImplementedError as e:  # Prepared as tfrecord only.
    raise ValueError(
        f'{tfds_name} in {builder.data_dir} has no array_record files, which random access needs '
        f'({e}). Convert it once: `tfds convert_format --dataset_version_dir={builder.data_dir} '
        '--out_file_format=array_record` (the tfds command needs `pip install apache-beam`), or '
        f'rebuild it: `tfds build {tfds_name} --file_format=array_record --data_dir=DATA_DIR`.'
    ) from e
  source = TfdsRandomAccessSource(data_source, has_labels=label is not None,
                                  fit_size=size if fit else 0)
  if fits_in_memory(len(source)):
    chunks = [source.get(np.arange(i, min(i + 1024, len(source))))
              for i in range(0, len(source), 1024)]
    labels = np.concatenate([c['labels'] for c in chunks]) if label else None
    source = _array_source(np.concatenate([c['images'] for c in chunks]), labels, data_config,
                           tfds_name)
  return source, num_classes, class_names


def _train_examples(builder, data_config) -> int | None:
  """The size of the train split as TFDS records it (for 'cifar10' and 'imagenet64' also when it
  does not, as under `tfds.testing.mock_data`); None when unknown."""
  splits = builder.info.splits
  if 'train' in splits.keys():
    return splits['train'].num_examples
  return _TFDS_DATASETS.get(data_config.name, (None, None, None))[2]


def _download_host(builder) -> str | None:
  """The host a TFDS builder downloads its first file from (None if it does not say)."""
  for url in sorted(getattr(builder, 'url_infos', None) or {}):
    host = urllib.parse.urlsplit(url).hostname
    if host:
      return host
  return None


def _download_and_prepare(builder, tfds_name: str, host: str | None, data_config) -> None:
  """Builds a missing TFDS dataset, or fails at once with instructions when it cannot."""
  where = data_config.data_dir or 'the TFDS default'
  help_text = (
      f'TFDS dataset {tfds_name!r} is not prepared in data_dir ({where}; looked for '
      f'{builder.data_dir}). Point --config.data.data_dir=DIR at a TFDS data_dir that holds it; '
      f'to make one, run `tfds build {tfds_name} --file_format=array_record --data_dir=DIR` on '
      'a machine with network access (the tfds command needs `pip install apache-beam`) and '
      "copy DIR here, or place the source files by hand as the dataset's TFDS catalogue page "
      'describes.')
  if not data_config.download:
    raise FileNotFoundError(f'{help_text} (Downloading is off: data.download=False.)')
  # TFDS retries an unreachable host for minutes (204 s measured offline); probe it first.
  unreachable = downloads.unreachable(host) if host else None
  if unreachable:
    raise FileNotFoundError(f'{help_text} (Cannot download: {unreachable}.)')
  try:
    builder.download_and_prepare(file_format='array_record')
  except Exception as e:
    raise RuntimeError(f'{help_text} (Download failed: {type(e).__name__}: {e}.)') from e


# ---------------------------------------------------------------------------------------------
# Batches.


def create_train_iterator(data_config, *, global_batch_size: int, seed: int,
                          start_step: int = 0) -> tuple[batches.BatchIterator, DatasetInfo]:
  """Returns this process's batches from `start_step` on, and the dataset's description."""
  source, info = create_source(data_config)
  iterator = batches.BatchIterator(source, global_batch_size=global_batch_size, seed=seed,
                           random_flip=data_config.random_flip, start_step=start_step,
                           process_index=jax.process_index(),
                           process_count=jax.process_count(), prefetch=data_config.prefetch)
  return iterator, info
