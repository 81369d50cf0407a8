"""Tests of the sources (exact pixels, clear errors) and of the resumable, sharded batch order."""

import time

import numpy as np
import pytest
from PIL import Image

from bit_diffusion import batches
from bit_diffusion import downloads
from bit_diffusion import image_files
from bit_diffusion import input_pipeline
from configs import default


def _data_config(base=None, **overrides):
  """Returns the default `config.data` (or a copy of `base`) with `overrides`."""
  config = default.get_config().data if base is None else base.copy_and_resolve_references()
  config.update(overrides)
  return config


def _indexed_source(n: int) -> input_pipeline.ArraySource:
  """Example i is the 1x2 image [2i, 2i + 1] (a flip swaps them) with label i % 7."""
  images = (2 * np.arange(n)[:, None] + np.arange(2)).reshape(n, 1, 2, 1)
  return input_pipeline.ArraySource(images, np.arange(n) % 7)


def _decode(batch):
  """Returns the example indices [b] and flip flags [b] of a batch of `_indexed_source`."""
  pixels = batch['images'][:, 0, :, 0]  # [b, 2]
  return pixels.min(axis=1) // 2, pixels[:, 0] > pixels[:, 1]


def _iterator(source, **kwargs):
  kwargs = {'global_batch_size': 8, 'seed': 3, 'random_flip': True, **kwargs}
  return batches.BatchIterator(source, **kwargs)


# ---------------------------------------------------------------------------------------------
# Sources.


def test_digits_source():
  source, info = input_pipeline.create_source(
      _data_config(name='digits', image_size=8, channels=1, num_bits=5))
  assert info == input_pipeline.DatasetInfo('digits', 1797, 8, 1, 5, 10, tuple('0123456789'))
  batch = source.get(np.arange(len(source)))
  assert batch['images'].shape == (1797, 8, 8, 1)
  assert batch['images'].min() == 0 and batch['images'].max() == 16
  np.testing.assert_array_equal(np.unique(batch['labels']), np.arange(10))


def test_digits_file_reader_equals_sklearn_load_digits(monkeypatch):
  """The bundled file read directly, and the fallback through sklearn.datasets when the file is
  not where this scikit-learn keeps it: both are load_digits's arrays."""
  from sklearn.datasets import load_digits
  expected = load_digits()
  direct = input_pipeline.load_sklearn_digits()
  monkeypatch.setattr(input_pipeline.importlib.util, 'find_spec', lambda name: None)
  fallback = input_pipeline.load_sklearn_digits()
  for images, labels in (direct, fallback):
    assert images.shape == (1797, 8, 8) and images.dtype == labels.dtype == np.int64
    np.testing.assert_array_equal(images, expected.images)
    np.testing.assert_array_equal(labels, expected.target)


def test_digits_need_five_bits():
  with pytest.raises(ValueError, match=r'example \d+ has values in \[0, 16\].*num_bits=5'):
    input_pipeline.create_source(_data_config(name='digits', image_size=8, channels=1,
                                              num_bits=4))


@pytest.mark.parametrize('shape', [(5, 4, 4), (5, 4, 4, 3)])
def test_npz_round_trip(tmp_path, shape):
  images = np.random.default_rng(0).integers(0, 1024, shape).astype(np.int16)
  labels = np.array([2, 0, 1, 2, 1])
  path = str(tmp_path / 'data.npz')
  np.savez(path, images=images, labels=labels)
  channels = 1 if len(shape) == 3 else 3
  source, info = input_pipeline.create_source(_data_config(
      name='npz', path=path, image_size=4, channels=channels, num_bits=10, class_conditional=True,
      num_classes=3))
  assert (info.num_examples, info.num_classes) == (5, 3)
  batch = source.get(np.array([4, 0, 2]))
  np.testing.assert_array_equal(batch['images'], images.reshape(5, 4, 4, -1)[[4, 0, 2]])
  np.testing.assert_array_equal(batch['labels'], [1, 2, 1])


def test_npz_errors(tmp_path):
  path = str(tmp_path / 'data.npz')
  config = _data_config(name='npz', path=path, image_size=2, channels=1, num_bits=8)
  with pytest.raises(FileNotFoundError, match='data.npz'):
    input_pipeline.create_source(config)
  np.savez(path, pixels=np.zeros((3, 2, 2), np.uint8))
  with pytest.raises(ValueError, match="no 'images'"):
    input_pipeline.create_source(config)
  np.savez(path, images=np.zeros((3, 2, 2), np.float32))
  with pytest.raises(ValueError, match='dtype float32'):
    input_pipeline.create_source(config)
  np.savez(path, images=np.zeros((3, 2, 3), np.uint8))
  with pytest.raises(ValueError, match=r'\[2, 3, 1\].*\[2, 2, 1\]'):
    input_pipeline.create_source(config)
  images = np.zeros((4, 2, 2), np.int32)
  images[2, 1, 0], images[3, 0, 0] = 300, -1
  np.savez(path, images=images)
  with pytest.raises(ValueError, match=r'example 2 has values in \[0, 300\].*2 examples'):
    input_pipeline.create_source(config)
  np.savez(path, images=np.zeros((3, 2, 2), np.uint8), labels=np.array([0, 5, 1]))
  with pytest.raises(ValueError, match='num_classes=6'):
    input_pipeline.create_source(_data_config(config, class_conditional=True, num_classes=4))
  np.savez(path, images=np.zeros((3, 2, 2), np.uint8))
  with pytest.raises(ValueError, match='no labels'):
    input_pipeline.create_source(_data_config(config, class_conditional=True))


def _write_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def test_folder_with_classes(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
  names = ['zebra/b.png', 'cat/x/deep.png', 'zebra/a.png', 'cat/c.png']
  for name, image in zip(names, images):
    _write_png(tmp_path / name, image)
  (tmp_path / 'cat' / 'notes.txt').write_text('not an image')
  source, info = input_pipeline.create_source(_data_config(
      name='folder', path=str(tmp_path), image_size=6, channels=3, class_conditional=True))
  assert (info.num_examples, info.num_classes, info.class_names) == (4, 2, ('cat', 'zebra'))
  # Files are listed sorted, depth first: cat/c, cat/x/deep, zebra/a, zebra/b.
  batch = source.get(np.array([3, 0, 1, 2]))
  np.testing.assert_array_equal(batch['images'], images[[0, 3, 1, 2]])
  np.testing.assert_array_equal(batch['labels'], [1, 0, 0, 1])


def test_folder_grey_resized_and_unlabelled(tmp_path):
  _write_png(tmp_path / 'wide.png', np.full((4, 8), 77, np.uint8))  # 8 wide, 4 high.
  _write_png(tmp_path / 'rgb.png', np.full((2, 2, 3), 200, np.uint8))
  config = _data_config(name='folder', path=str(tmp_path), image_size=2, channels=1)
  source, info = input_pipeline.create_source(config)
  assert info.num_classes == 0
  batch = source.get(np.array([1, 0]))
  assert batch['images'].shape == (2, 2, 2, 1)
  np.testing.assert_array_equal(batch['images'][0], 77)  # Shrunk to 4x2, centre-cropped.
  np.testing.assert_array_equal(batch['images'][1], 200)  # RGB (200, 200, 200) -> L 200.
  np.testing.assert_array_equal(batch['labels'], 0)
  with pytest.raises(ValueError, match='no labels'):
    input_pipeline.create_source(_data_config(config, class_conditional=True))
  with pytest.raises(ValueError, match='num_bits=8'):
    input_pipeline.create_source(_data_config(config, num_bits=5))


def test_folder_unreadable_images(tmp_path):
  _write_png(tmp_path / 'good.png', np.random.default_rng(0).integers(0, 256, (32, 32), np.uint8))
  (tmp_path / 'broken.png').write_bytes(b'not a png at all')
  config = _data_config(name='folder', path=str(tmp_path), image_size=32, channels=1)
  with pytest.raises(ValueError, match='broken.png'):
    input_pipeline.create_source(config)
  # A valid header with truncated pixel data passes the header check and fails when decoded,
  # also through the background thread of the iterator.
  png = (tmp_path / 'good.png').read_bytes()
  (tmp_path / 'broken.png').write_bytes(png[:len(png) // 2])
  source, _ = input_pipeline.create_source(config)
  with pytest.raises(ValueError, match=r'broken.png \(example 0\)'):
    source.get(np.array([1, 0]))
  with _iterator(source, global_batch_size=2) as iterator:
    with pytest.raises(ValueError, match='broken.png'):
      next(iterator)
    with pytest.raises(RuntimeError, match='closed'):
      next(iterator)


# ---------------------------------------------------------------------------------------------
# Batch order.


def test_batch_at_is_deterministic_and_what_next_yields():
  source = _indexed_source(50)
  with _iterator(source) as iterator:
    yielded = [next(iterator) for _ in range(9)]
  fresh = _iterator(source)
  for step, batch in enumerate(yielded):
    expected = fresh.batch_at(step)
    assert batch['images'].dtype == batch['labels'].dtype == np.int32
    assert batch['images'].shape == (8, 1, 2, 1)
    np.testing.assert_array_equal(batch['images'], expected['images'])
    np.testing.assert_array_equal(batch['labels'], expected['labels'])
    indices, _ = _decode(batch)
    np.testing.assert_array_equal(batch['labels'], indices % 7)
  assert not np.array_equal(fresh.batch_at(0)['images'],
                            _iterator(source, seed=4).batch_at(0)['images'])


@pytest.mark.parametrize('prefetch', [0, 2])
def test_resumed_iterator_continues_exactly(prefetch):
  source = _indexed_source(50)
  with _iterator(source, prefetch=prefetch) as iterator:
    uninterrupted = [next(iterator) for _ in range(12)]
  with _iterator(source, start_step=5, prefetch=prefetch) as iterator:
    resumed = [next(iterator) for _ in range(7)]
    assert iterator.step == 12
  for a, b in zip(uninterrupted[5:], resumed):
    np.testing.assert_array_equal(a['images'], b['images'])
    np.testing.assert_array_equal(a['labels'], b['labels'])


def test_processes_get_disjoint_slices_of_the_global_batch():
  source = _indexed_source(50)
  single = _iterator(source)
  halves = [_iterator(source, process_index=p, process_count=2) for p in range(2)]
  for step in (0, 6, 13):  # Step 6 straddles epochs 0 and 1.
    parts = [h.batch_at(step) for h in halves]
    assert parts[0]['images'].shape == (4, 1, 2, 1)
    assert not set(_decode(parts[0])[0]) & set(_decode(parts[1])[0])
    whole = single.batch_at(step)
    for key in ('images', 'labels'):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  with pytest.raises(ValueError, match='multiple'):
    _iterator(source, global_batch_size=6, process_count=4)


def test_each_epoch_is_a_permutation():
  source = _indexed_source(50)
  iterator = _iterator(source)
  stream = np.concatenate([_decode(iterator.batch_at(s))[0] for s in range(19)])  # 152 >= 150.
  epochs = stream[:150].reshape(3, 50)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(50))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(50))


def test_flips():
  source = _indexed_source(50)
  flips = np.concatenate([_decode(_iterator(source).batch_at(s))[1] for s in range(50)])
  assert 0.4 < flips.mean() < 0.6
  no_flip = _iterator(source, random_flip=False)
  assert not np.concatenate([_decode(no_flip.batch_at(s))[1] for s in range(50)]).any()


def test_create_train_iterator():
  iterator, info = input_pipeline.create_train_iterator(
      _data_config(name='digits', image_size=8, channels=1, num_bits=5), global_batch_size=16,
      seed=0, start_step=3)
  with iterator:
    batch = next(iterator)
    np.testing.assert_array_equal(batch['images'], iterator.batch_at(3)['images'])
  assert batch['images'].shape == (16, 8, 8, 1) and info.num_classes == 10


# ---------------------------------------------------------------------------------------------
# TFDS.


def test_cifar10_with_mock_data(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  # Under mock_data the dataset counts as not prepared, its download as a no-op.
  monkeypatch.setattr(downloads, 'unreachable', lambda host: None)
  with tfds.testing.mock_data(num_examples=12):
    source, info = input_pipeline.create_source(_data_config(name='cifar10',
                                                             class_conditional=True))
  assert (info.num_examples, info.image_size, info.channels, info.num_classes) == (12, 32, 3, 10)
  batch = source.get(np.arange(12))
  assert batch['images'].shape == (12, 32, 32, 3) and batch['images'].dtype == np.uint8
  assert batch['labels'].min() >= 0 and batch['labels'].max() < 10
  with _iterator(source, global_batch_size=4) as iterator:
    assert next(iterator)['images'].shape == (4, 32, 32, 3)


def test_imagenet64_random_access(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(downloads, 'unreachable', lambda host: None)
  rng = np.random.default_rng(0)
  examples = [{'image': rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), 'label': 7 * i}
              for i in range(6)]
  config = _data_config(name='imagenet64', image_size=64, class_conditional=True,
                        num_classes=1000)
  with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kwargs: examples):
    source, info = input_pipeline.create_source(config)
  assert (info.num_examples, info.num_classes) == (6, 1000)
  batch = source.get(np.array([5, 1]))
  np.testing.assert_array_equal(batch['images'], [examples[5]['image'], examples[1]['image']])
  np.testing.assert_array_equal(batch['labels'], [35, 7])

  def tfrecord_only(builder, split, **kwargs):
    raise NotImplementedError('Random access data source for file format tfrecord')

  with tfds.testing.mock_data(as_data_source_fn=tfrecord_only):
    with pytest.raises(ValueError, match='tfds convert_format'):
      input_pipeline.create_source(config)


def _store_tfds(data_dir, name, config, version, file_format, n):
  """Prepares a real TFDS dataset in `data_dir`: example i has label i, every pixel 7 * i."""
  tfds = pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('importlib_resources', reason='TFDS needs it to prepare any dataset')
  features = tfds.builder(f'{name}/{config}' if config else name).info.features
  examples = []
  for i in range(n):
    example = {'image': np.full(features['image'].shape, 7 * i, np.uint8), 'label': i}
    examples.append((i, {'id': f'train_{i}', **example} if 'id' in features else example))
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, config=config, version=version, features=features, data_dir=data_dir,
      split_datasets={'train': examples}, file_format=file_format)


@pytest.mark.parametrize('file_format', ['array_record', 'tfrecord'])
def test_prepared_tfds_datasets(tmp_path, file_format, monkeypatch):
  """Small datasets are loaded into memory; larger than TFDS_IN_MEMORY_BYTES (ImageNet 64x64:
  15.7 GB; here set to 0) they are read with random access, which needs array_record files."""
  _store_tfds(tmp_path, 'cifar10', None, '3.0.2', file_format, n=5)
  source, info = input_pipeline.create_source(_data_config(name='cifar10', data_dir=str(tmp_path),
                                                           download=False))
  assert isinstance(source, input_pipeline.ArraySource) and info.num_examples == 5
  batch = source.get(np.arange(5))
  np.testing.assert_array_equal(np.sort(batch['labels']), np.arange(5))
  np.testing.assert_array_equal(batch['images'], 7 * batch['labels'][:, None, None, None]
                                + np.zeros((5, 32, 32, 3), int))

  _store_tfds(tmp_path, 'imagenet_resized', '64x64', '0.1.0', file_format, n=3)
  config = _data_config(name='imagenet64', data_dir=str(tmp_path), image_size=64, download=False)
  small, _ = input_pipeline.create_source(config)
  assert isinstance(small, input_pipeline.ArraySource) and len(small) == 3
  monkeypatch.setattr(input_pipeline, 'TFDS_IN_MEMORY_BYTES', 0)
  if file_format == 'tfrecord':
    with pytest.raises(ValueError, match='tfds convert_format'):
      input_pipeline.create_source(config)
    return
  source, info = input_pipeline.create_source(config)
  assert isinstance(source, input_pipeline.TfdsRandomAccessSource)
  assert (info.num_examples, info.num_classes) == (3, 1000)
  batch = source.get(np.array([2, 0, 2]))
  assert batch['images'].shape == (3, 64, 64, 3) and batch['labels'][0] == batch['labels'][2]
  np.testing.assert_array_equal(batch['images'][:, 0, 0, 0], 7 * batch['labels'])


def test_any_tfds_image_dataset_by_name_with_mock_data(monkeypatch):
  """data.name='tfds' opens a TFDS image dataset by its name (here MNIST: 28x28 grey, 10
  classes); a config of another size or channel count is told the dataset's."""
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(downloads, 'unreachable', lambda host: None)
  config = _data_config(name='tfds', tfds_name='mnist', image_size=28, channels=1,
                        class_conditional=True)
  with tfds.testing.mock_data(num_examples=12):
    source, info = input_pipeline.create_source(config)
    with pytest.raises(ValueError, match=r'mnist images have 1 channels but the config asks '
                       r'for 3. Set --config.data.channels=1.'):
      input_pipeline.create_source(_data_config(name='tfds', tfds_name='mnist'))
    with pytest.raises(ValueError, match=r'mnist images are \[28, 28, 1\] but the config asks for '
                       r'\[32, 32, 1\]. Set --config.data.image_size=28 --config.data.channels=1'):
      input_pipeline.create_source(_data_config(name='tfds', tfds_name='mnist', channels=1))
  assert (info.name, info.num_examples, info.image_size, info.channels, info.num_classes) == (
      'mnist', 12, 28, 1, 10)
  assert info.class_names == tuple(str(d) for d in range(10))
  batch = source.get(np.arange(12))
  assert batch['images'].shape == (12, 28, 28, 1) and batch['images'].dtype == np.uint8
  assert batch['labels'].min() >= 0 and batch['labels'].max() < 10


def test_prepared_tfds_image_dataset_without_labels(tmp_path, monkeypatch):
  """Any TFDS image dataset in data_dir (one the test makes: unlabelled 8x8 RGB, image i all
  7 * i), in memory or with random access: exact pixels, no labels; bad names are refused."""
  tfds = pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('importlib_resources', reason='TFDS needs it to prepare any dataset')
  features = tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(8, 8, 3))})
  examples = [(i, {'image': np.full((8, 8, 3), 7 * i, np.uint8)}) for i in range(5)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name='unlabelled_squares', version='1.0.0', features=features, data_dir=str(tmp_path),
      split_datasets={'train': examples}, file_format='array_record')
  config = _data_config(name='tfds', tfds_name='unlabelled_squares', data_dir=str(tmp_path),
                        image_size=8, download=False)
  for limit, kind in ((2**31, input_pipeline.ArraySource),
                      (0, input_pipeline.TfdsRandomAccessSource)):
    monkeypatch.setattr(input_pipeline, 'TFDS_IN_MEMORY_BYTES', limit)
    source, info = input_pipeline.create_source(config)
    assert isinstance(source, kind)
    assert (info.name, info.num_examples, info.num_classes) == ('unlabelled_squares', 5, 0)
    batch = source.get(np.arange(5))  # TFDS stores the examples in an order of its own.
    np.testing.assert_array_equal(np.sort(batch['images'].reshape(5, -1), axis=0),
                                  np.repeat(7 * np.arange(5)[:, None], 192, 1))
    assert (batch['images'] == batch['images'][:, :1, :1, :1]).all()  # Each image one value.
    np.testing.assert_array_equal(batch['labels'], np.zeros(5))
  with pytest.raises(ValueError, match="dataset 'unlabelled_squares' has no labels"):
    input_pipeline.create_source(_data_config(config, class_conditional=True))
  with pytest.raises(ValueError, match="TFDS has no dataset 'no_such_images'"):
    input_pipeline.create_source(_data_config(config, tfds_name='no_such_images'))
  with pytest.raises(ValueError, match="data.name='tfds' needs .* --config.data.tfds_name"):
    input_pipeline.create_source(_data_config(config, tfds_name=''))


@pytest.mark.parametrize('file_format', ['array_record', 'tfrecord'])
def test_non_square_tfds_images_are_fitted_as_a_folders(tmp_path, monkeypatch, file_format):
  """TFDS images that are not square or vary in size (CelebA, LSUN) are fitted to
  data.image_size as they are read (into memory, or with random access when larger than
  TFDS_IN_MEMORY_BYTES): shorter side scaled, centre crop. Pixel (r, c) of each image made here
  is 10 c + r, so the crop's offset shows in every value."""
  tfds = pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('importlib_resources', reason='TFDS needs it to prepare any dataset')
  grid = lambda h, w: (10 * np.arange(w)[None, :] + np.arange(h)[:, None]).astype(np.uint8)
  features = tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(None, None, 1)),
                                         'label': tfds.features.ClassLabel(num_classes=2)})
  shapes = {0: (8, 12), 1: (16, 8), 2: (16, 24)}  # Wide, tall, and wide at twice the size.
  examples = [(i, {'image': grid(*shapes[i])[..., None], 'label': i % 2}) for i in range(3)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name='mixed_sizes', version='1.0.0', features=features, data_dir=str(tmp_path),
      split_datasets={'train': examples}, file_format=file_format)
  config = _data_config(name='tfds', tfds_name='mixed_sizes', data_dir=str(tmp_path),
                        image_size=8, channels=1, download=False)
  source, info = input_pipeline.create_source(config)
  assert isinstance(source, input_pipeline.ArraySource) and info.num_classes == 2
  np.testing.assert_array_equal(np.sort(source.labels), [0, 0, 1])
  monkeypatch.setattr(input_pipeline, 'TFDS_IN_MEMORY_BYTES', 0)
  if file_format == 'tfrecord':
    with pytest.raises(ValueError, match='tfds convert_format'):
      input_pipeline.create_source(config)
  else:
    random_access, _ = input_pipeline.create_source(config)
    assert isinstance(random_access, input_pipeline.TfdsRandomAccessSource)
    np.testing.assert_array_equal(random_access.get(np.arange(3))['images'],
                                  source.get(np.arange(3))['images'])
  batch = source.get(np.arange(3))
  assert batch['images'].shape == (3, 8, 8, 1)
  by_corner = {int(im[0, 0, 0]): im[..., 0] for im in batch['images']}
  np.testing.assert_array_equal(by_corner[20], grid(8, 12)[:, 2:10])  # Columns 2..9 kept.
  np.testing.assert_array_equal(by_corner[4], grid(16, 8)[4:12])  # Rows 4..11 kept.
  halved = np.asarray(image_files.fit_square(Image.fromarray(grid(16, 24)), 8))
  assert halved.shape == (8, 8) and not np.array_equal(halved, by_corner[20])
  np.testing.assert_array_equal(by_corner[int(halved[0, 0])], halved)


def test_missing_tfds_dataset_probes_its_own_download_host(tmp_path, monkeypatch):
  """A dataset that is not prepared: the host its TFDS builder downloads from is probed first
  (MNIST's: storage.googleapis.com), and an unreachable one fails at once with instructions."""
  pytest.importorskip('tensorflow_datasets')
  probed = []
  monkeypatch.setattr(downloads, 'unreachable',
                      lambda host: probed.append(host) or 'unreachable (test)')
  with pytest.raises(FileNotFoundError, match='tfds build mnist') as error:
    input_pipeline.create_source(_data_config(name='tfds', tfds_name='mnist', image_size=28,
                                              channels=1, data_dir=str(tmp_path)))
  assert probed == ['storage.googleapis.com'] and 'Cannot download' in str(error.value)


def test_reference_statistics_are_kept_per_tfds_dataset():
  """Two TFDS datasets never share FID reference statistics; other sources keep their keys."""
  from bit_diffusion.metrics import features
  config = default.get_config()
  cifar10 = features.reference_key(config)
  config.data.name = 'tfds'
  config.data.tfds_name = 'imagenet_resized/32x32'
  imagenet32 = features.reference_key(config)
  config.data.tfds_name = 'cifar100'
  cifar100 = features.reference_key(config)
  assert cifar10.startswith('cifar10_32px_inception_')
  assert imagenet32.startswith('tfds_imagenet_resized_32x32_32px_')
  assert cifar100.startswith('tfds_cifar100_32px_') and len({cifar10, imagenet32, cifar100}) == 3


@pytest.mark.parametrize('download', [False, True])
def test_missing_cifar10_fails_fast(tmp_path, monkeypatch, download):
  tfds = pytest.importorskip('tensorflow_datasets')

  def no_download(*args, **kwargs):
    raise AssertionError('download_and_prepare must not run without network')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', no_download)
  # An unresolvable host (RFC 6761), so the test never downloads on a machine with network.
  monkeypatch.setitem(input_pipeline._TFDS_DATASETS, 'cifar10',
                      ('cifar10', 'host.invalid', 50_000))
  start = time.time()
  with pytest.raises(FileNotFoundError) as error:
    input_pipeline.create_source(_data_config(name='cifar10', data_dir=str(tmp_path),
                                              download=download))
  assert time.time() - start < 20
  message = str(error.value)
  assert 'cifar10' in message and 'data_dir' in message and str(tmp_path) in message
  assert 'tfds build cifar10' in message
  assert ('download=False' in message) != download
