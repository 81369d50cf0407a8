"""Feature networks for the sample metrics, sharded feature extraction, reference statistics.

A `FeatureNet` maps integer images to (features, logits): the FID Inception-v3 (`inception.py`;
pool3 [B, 2048], logits [B, 1008]) or, for the embedded digits, the small cached classifier
(`digits_classifier.py`; [B, 64], [B, 10]). Images are scaled to [0, 1] by the data's display
maximum (16 for digits, 2**num_bits - 1 otherwise); values above it are not clipped.

`extract` runs a net over images in fixed-size batches sharded over the 'data' axis of a mesh
(parameters replicated), padding the last batch, so one compiled function serves every batch and
the features do not depend on how many devices share it. Stored files are written under a
process-unique temporary name, then renamed, so processes sharing a cache do not collide.

Reference statistics (mean and covariance of the real data's features, plus up to
`max_real_features` feature vectors for precision/recall) are computed once per dataset, feature
net and reference choice and stored as .npz in CACHE_DIR/reference/:

- reference 'train': the whole training set (the paper: 50K samples against the training set);
- reference 'half': a fixed random half B of the training set; the other half A gives the
  real-against-real floor (FID, IS, precision/recall of A against B), the value a perfect model
  would get with as many samples as A holds. Used for the small digits set.
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bit_diffusion import cpu
from bit_diffusion import input_pipeline
from bit_diffusion.metrics import digits_classifier
from bit_diffusion.metrics import fid
from bit_diffusion.metrics import inception

REFERENCE_VERSION = 1
_SPLIT_SEED = 0  # Seeds the permutation that splits the data into halves A and B.


@dataclasses.dataclass
class FeatureNet:
  """apply(params, images [B, H, W, C] float in [0, 1]) -> (features [B, D], logits [B, K])."""
  name: str
  apply: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
  params: Any
  description: str


def create_feature_net(eval_config) -> FeatureNet:
  """The net of `eval.feature_net`; fails at once if its weights are missing (no substitutes)."""
  name = eval_config.feature_net
  if name == 'inception':
    path = inception.resolve_weights(eval_config.inception_weights, eval_config.cache_dir,
                                     eval_config.download)
    graphdef, state = inception.load_inception(path)
    return FeatureNet('inception', inception.make_apply_fn(graphdef), state,
                      f'FID Inception-v3 pool3 ({os.path.basename(path)}), bilinear 299x299')
  if name == 'digits':
    graphdef, params, accuracy = digits_classifier.load_or_train(eval_config.cache_dir)
    return FeatureNet('digits', digits_classifier.make_apply_fn(graphdef), params,
                      f'digits classifier features (train accuracy {accuracy:.3f})')
  raise ValueError(f"Unknown eval.feature_net {name!r}: use 'inception' or 'digits'.")


def to_unit_range(images: np.ndarray, max_value: int) -> np.ndarray:
  """Integer images -> float32 images / max_value (1.0 is white)."""
  return (np.asarray(images, np.float32) / max_value).astype(np.float32)


class Extractor:
  """A jitted, mesh-sharded `FeatureNet` call on batches of a fixed size.

  `cpu_config` (a config's `cpu` section) picks the CPU kernels as for the train step
  (`cpu.jit`): on an AVX2-only EPYC, Inception-v3 features of 100 CIFAR-sized images took 8.3 s
  instead of 21.8 s with XLA's defaults (docs/benchmarks.md). None keeps XLA's defaults.
  """

  def __init__(self, net: FeatureNet, mesh: Mesh, batch_size: int, cpu_config=None):
    if batch_size % mesh.size:
      raise ValueError(f'Feature batch {batch_size} does not divide over {mesh.size} devices.')
    self.batch_size = batch_size
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
    self.params = jax.device_put(net.params, replicated)
    self._sharded = sharded
    # Outputs replicated: small ([B, D]), and readable by every process of a multi-host job.
    self._fn = cpu.jit(net.apply, cpu_config, in_shardings=(replicated, sharded),
                       out_shardings=(replicated, replicated))

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images float [n <= batch_size, H, W, C] -> (features [n, D], logits [n, K]) numpy."""
    n = len(images)
    padded = np.zeros((self.batch_size,) + images.shape[1:], np.float32)
    padded[:n] = images
    features, logits = self._fn(self.params, jax.device_put(jnp.asarray(padded), self._sharded))
    return np.asarray(features)[:n], np.asarray(logits)[:n]


def extract(extractor: Extractor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """All of images float [N, H, W, C] -> (features [N, D], logits [N, K]) float64."""
  outputs = [extractor(images[i:i + extractor.batch_size])
             for i in range(0, len(images), extractor.batch_size)]
  return (np.concatenate([o[0] for o in outputs]).astype(np.float64),
          np.concatenate([o[1] for o in outputs]).astype(np.float64))


def split_halves(num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the fixed halves A (first N // 2 of a seeded permutation) and B (the rest)."""
  order = np.random.default_rng(_SPLIT_SEED).permutation(num_examples)
  return np.sort(order[:num_examples // 2]), np.sort(order[num_examples // 2:])


def reference_key(config) -> str:
  """A file name for the reference statistics of this data, feature net and reference."""
  data, ev = config.data, config.eval
  identity = {'version': REFERENCE_VERSION, 'data': data.name, 'path': data.path,
              'data_dir': data.data_dir, 'size': data.image_size, 'channels': data.channels,
              'bits': data.num_bits, 'display_max': data.display_max, 'net': ev.feature_net,
              'reference': ev.reference, 'max_real': ev.max_real_features,
              'weights': os.path.basename(ev.inception_weights)}
  name = data.name
  if name == 'tfds':  # The dataset's own name; other sources' keys stay as they were.
    identity['tfds_name'] = data.get('tfds_name', '')
    name = 'tfds_' + identity['tfds_name'].replace('/', '_')
  digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
  return f'{name}_{data.image_size}px_{ev.feature_net}_{ev.reference}_{digest}.npz'


def _real_features(source, indices: np.ndarray, extractor: Extractor, max_value: int,
                   what: str) -> tuple[np.ndarray, np.ndarray]:
  features, logits, start_time = [], [], time.time()
  chunk = extractor.batch_size
  for i in range(0, len(indices), chunk):
    images = source.get(indices[i:i + chunk])['images']
    f, lg = extractor(to_unit_range(images, max_value))
    features.append(f)
    logits.append(lg)
    done = min(i + chunk, len(indices))
    if (i // chunk) % 20 == 0 or done == len(indices):
      logging.info('Reference features (%s): %d/%d images, %.0f s.', what, done, len(indices),
                   time.time() - start_time)
  return (np.concatenate(features).astype(np.float64),
          np.concatenate(logits).astype(np.float64))


def reference_statistics(config, extractor: Extractor, max_value: int,
                         path: Optional[str] = None) -> dict[str, Any]:
  """Loads, or computes and stores, the reference of `config.eval.reference` (see module doc).

  Returns {'stats': fid.Statistics, 'real_features': [M, D], 'floor': {...} or None,
  'floor_count': |A| or 0, 'path': the .npz}.
  """
  ev = config.eval
  if path is None:
    path = ev.reference_stats or os.path.join(
        ev.cache_dir or inception.default_cache_dir(), 'reference', reference_key(config))
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as data:
      floor = json.loads(str(data['floor_json']))
      return {'stats': fid.Statistics(data['mu'], data['sigma'], int(data['count'])),
              'real_features': data['real_features'], 'floor': floor or None,
              'floor_count': int(data['floor_count']), 'path': path}
  if ev.reference_stats:
    raise FileNotFoundError(f'eval.reference_stats={path} does not exist; leave it empty to '
                            'compute the statistics into the cache.')
  source, _ = input_pipeline.create_source(config.data)
  num = len(source)
  start = time.time()
  floor, floor_count = {}, 0
  if ev.reference == 'half':
    half_a, half_b = split_halves(num)
    features, _ = _real_features(source, half_b, extractor, max_value, 'half B')
    features_a, logits_a = _real_features(source, half_a, extractor, max_value, 'half A')
    stats = fid.statistics(features)
    floor = fid.all_metrics(stats, features, features_a, logits_a, ev.pr_k, ev.is_splits)
    floor_count = len(half_a)
  elif ev.reference == 'train':
    features, _ = _real_features(source, np.arange(num), extractor, max_value, 'train')
    stats = fid.statistics(features)
  else:
    raise ValueError(f"Unknown eval.reference {ev.reference!r}: use 'train' or 'half'.")
  keep = np.random.default_rng(1).permutation(len(features))[:ev.max_real_features]
  real_features = features[np.sort(keep)]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  part = f'{path}.{os.getpid()}.part.npz'  # Unique per process; renamed at once.
  np.savez(part, mu=stats.mu, sigma=stats.sigma, count=stats.count,
           real_features=real_features, floor_json=json.dumps(floor), floor_count=floor_count)
  os.replace(part, path)
  logging.info('Reference statistics of %d images in %.0f s, stored in %s.', stats.count,
               time.time() - start, path)
  return {'stats': stats, 'real_features': real_features, 'floor': floor or None,
          'floor_count': floor_count, 'path': path}
