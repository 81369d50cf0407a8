"""A small digits classifier whose features stand in for Inception's on the embedded 8x8 digits.

Inception-v3 features of 8x8, 17-level digits upsampled to 299x299 mean little, and its weights
need a download. So the digits check computes the same metrics (FID, IS, precision/recall) in
the feature space of this network, trained once on scikit-learn's 1,797 digits (all of them; no
download) and cached:

  input [B, 8, 8, 1] in [0, 1] (value / 16) -> conv 3x3, 32, ReLU -> conv 3x3 stride 2, 64,
  ReLU -> dense 128, ReLU -> dense 64, ReLU (the features) -> dense 10 (the logits).

Training is deterministic (fixed seeds and batch order, full-precision CPU math): Adam 1e-3,
batch 128, `num_steps` steps. The parameters are stored in CACHE_DIR/digits_classifier_v1_*.npz
and reused; a different machine may retrain to slightly different weights, so compare digits
FIDs measured with the same cached file.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from bit_diffusion import input_pipeline
from bit_diffusion.metrics import inception

VERSION = 1
NUM_FEATURES = 64
NUM_CLASSES = 10
DEFAULT_STEPS = 800


class DigitsClassifier(nnx.Module):
  """[B, 8, 8, 1] in [0, 1] -> (features [B, 64], logits [B, 10])."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
    self.dense1 = nnx.Linear(4 * 4 * 64, 128, rngs=rngs)
    self.dense2 = nnx.Linear(128, NUM_FEATURES, rngs=rngs)
    self.head = nnx.Linear(NUM_FEATURES, NUM_CLASSES, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = jax.nn.relu(self.conv1(x))  # [B, 8, 8, 32]
    x = jax.nn.relu(self.conv2(x))  # [B, 4, 4, 64]
    x = jax.nn.relu(self.dense1(x.reshape(x.shape[0], -1)))  # [B, 128]
    features = jax.nn.relu(self.dense2(x))  # [B, 64]
    return features, self.head(features)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits: images float32 [1797, 8, 8, 1] in [0, 1], labels int32 [1797]."""
  images, labels = input_pipeline.load_sklearn_digits()
  return (images[..., None] / 16.0).astype(np.float32), labels.astype(np.int32)


def train(num_steps: int = DEFAULT_STEPS, seed: int = 0, batch_size: int = 128
          ) -> tuple[nnx.GraphDef, nnx.State, float]:
  """Trains the classifier on all digits; returns (graphdef, params state, train accuracy)."""
  images, labels = load_digits()
  graphdef, params = nnx.split(DigitsClassifier(rngs=nnx.Rngs(seed)))
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(params):
      _, logits = nnx.merge(graphdef, params)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(len(images))
                          for _ in range(num_steps * batch_size // len(images) + 1)])
  for i in range(num_steps):
    index = order[i * batch_size:(i + 1) * batch_size]
    params, opt_state = step(params, opt_state, images[index], labels[index])
  _, logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, images)
  accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == labels))
  return graphdef, params, accuracy


def _flatten(tree: dict, prefix: str = '') -> dict[str, np.ndarray]:
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    flat.update(_flatten(value, name + '/') if isinstance(value, dict) else
                {name: np.asarray(value)})
  return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = jnp.asarray(value)
  return tree


def cache_path(cache_dir: str = '', num_steps: int = DEFAULT_STEPS) -> str:
  return os.path.join(cache_dir or inception.default_cache_dir(),
                      f'digits_classifier_v{VERSION}_{num_steps}steps.npz')


def load_or_train(cache_dir: str = '', num_steps: int = DEFAULT_STEPS
                  ) -> tuple[nnx.GraphDef, nnx.State, float]:
  """The cached classifier (graphdef, params, train accuracy), trained and saved on first use."""
  path = cache_path(cache_dir, num_steps)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: DigitsClassifier(rngs=nnx.Rngs(0))))
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
    accuracy = float(arrays.pop('__train_accuracy__'))
    nnx.replace_by_pure_dict(abstract, _unflatten(arrays))
    return graphdef, abstract, accuracy
  start = time.time()
  graphdef, params, accuracy = train(num_steps)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  arrays = _flatten(nnx.to_pure_dict(params))
  part = f'{path}.{os.getpid()}.part.npz'  # Unique per process; renamed at once.
  np.savez(part, __train_accuracy__=np.float64(accuracy), **arrays)
  os.replace(part, path)
  logging.info('Trained the digits classifier in %.1f s (train accuracy %.4f); cached in %s.',
               time.time() - start, accuracy, path)
  return graphdef, params, accuracy


def make_apply_fn(graphdef: nnx.GraphDef):
  """fn(params, images [B, 8, 8, 1] in [0, 1]) -> (features [B, 64], logits [B, 10])."""

  def apply(params, images):
    return nnx.merge(graphdef, params)(images.astype(jnp.float32))

  return apply
