"""The FID Inception-v3 port: architecture, preprocessing and weight loading (random weights)."""

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bit_diffusion import downloads
from bit_diffusion.metrics import features
from bit_diffusion.metrics import inception
from configs import cifar10
from tests import subprocesses


@pytest.fixture(scope='module')
def random_net():
  return inception.load_inception(None)


def test_parameter_count_matches_torchvision(random_net):
  graphdef, state = random_net
  params = nnx.state(nnx.merge(graphdef, state), nnx.Param)
  # torchvision's inception_v3 has 27,161,264 parameters; without AuxLogits (3,326,696) and with
  # 1008 instead of 1000 classes (+8 * 2049) it is the FID network.
  assert sum(x.size for x in jax.tree.leaves(params)) == 27_161_264 - 3_326_696 + 8 * 2049
  # pytorch-fid's state dict: 94 BasicConv2d (conv weight + 4 BatchNorm arrays each), fc.
  assert len(inception.random_state_dict()) == 94 * 5 + 2


def test_output_shapes_and_finite_values(random_net):
  graphdef, state = random_net
  apply = jax.jit(inception.make_apply_fn(graphdef))
  images = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
  pool3, logits = apply(state, images)
  assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.all(np.isfinite(pool3)) and np.all(np.asarray(pool3) >= 0)  # After ReLU, averaged.
  grey_pool3, _ = apply(state, images[..., :1])  # Grey images are repeated to 3 channels.
  same_pool3, _ = apply(state, np.repeat(images[..., :1], 3, -1))
  np.testing.assert_allclose(grey_pool3, same_pool3, rtol=1e-5, atol=1e-6)


def _torch_bilinear(image, size):
  """PyTorch's F.interpolate(bilinear, align_corners=False) of [H, W], written out."""
  def weights(n_in):
    src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, None)
    low = np.minimum(np.floor(src).astype(int), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    matrix = np.zeros((size, n_in))
    np.add.at(matrix, (np.arange(size), low), 1 - frac)
    np.add.at(matrix, (np.arange(size), high), frac)
    return matrix
  return weights(image.shape[0]) @ image @ weights(image.shape[1]).T


def test_preprocess_resizes_to_299_bilinear_and_scales_to_minus_one_one():
  rng = np.random.default_rng(1)
  images = rng.random((2, 8, 8, 1)).astype(np.float32)
  out = np.asarray(inception.preprocess(jnp.asarray(images)))
  assert out.shape == (2, 299, 299, 3)
  expected = 2 * _torch_bilinear(images[0, :, :, 0].astype(np.float64), 299) - 1
  np.testing.assert_allclose(out[0, :, :, 0], expected, atol=1e-5)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  black_white = np.asarray(inception.preprocess(jnp.asarray(
      np.stack([np.zeros((32, 32, 3)), np.ones((32, 32, 3))]))))
  np.testing.assert_allclose(black_white[0], -1.0, atol=1e-6)
  np.testing.assert_allclose(black_white[1], 1.0, atol=1e-6)
  # An 8-bit CIFAR-10 image maps to [0, 1] by its display maximum 255.
  assert features.to_unit_range(np.array([0, 255]), 255).tolist() == [0.0, 1.0]


def test_state_dict_round_trip_and_mismatches_are_refused():
  arrays = inception.random_state_dict(seed=3)
  _, abstract = inception.abstract_inception()
  state = inception.state_from_state_dict(abstract, arrays)
  flat = dict(nnx.to_flat_state(state))
  kernel = np.asarray(flat[('Mixed_6b', 'branch7x7_2', 'conv', 'kernel')][...])
  torch_weight = arrays['Mixed_6b.branch7x7_2.conv.weight']  # [out, in, 1, 7]
  np.testing.assert_array_equal(kernel, torch_weight.transpose(2, 3, 1, 0))
  assert kernel.shape == (1, 7, 128, 128)

  missing = dict(arrays)
  del missing['Mixed_7c.branch_pool.bn.running_var']
  wrong = dict(arrays, **{'fc.weight': np.zeros((1000, 2048), np.float32)})
  extra = dict(arrays, **{'AuxLogits.fc.weight': np.zeros((1008, 768), np.float32)})
  for bad, message in ((missing, 'lack 1 entries'), (wrong, 'fc.weight: shape'),
                       (extra, 'Unexpected key')):
    with pytest.raises(ValueError, match=message):
      inception.state_from_state_dict(inception.abstract_inception()[1], bad)


def test_fid_without_weights_or_network_fails_at_once(tmp_path, monkeypatch):
  config = cifar10.get_config()
  config.eval.cache_dir = str(tmp_path)
  # As on a machine without network: the download host does not answer.
  monkeypatch.setattr(downloads, 'unreachable', lambda host: f'{host}:443 unreachable')
  start = time.time()
  with pytest.raises(FileNotFoundError) as error:
    features.create_feature_net(config.eval)
  assert time.time() - start < 5
  message = str(error.value)
  assert inception.WEIGHTS_URL in message
  assert 'tools/convert_inception_weights.py' in message
  assert os.path.join(str(tmp_path), inception.NPZ_NAME) in message
  assert 'unreachable' in message and not os.listdir(tmp_path)  # Nothing faked, nothing left.

  config.eval.inception_weights = str(tmp_path / 'missing.npz')
  with pytest.raises(FileNotFoundError, match='missing.npz does not exist'):
    features.create_feature_net(config.eval)


def test_converted_npz_is_loaded(tmp_path):
  path = str(tmp_path / 'weights.npz')
  np.savez(path, **inception.random_state_dict(seed=5))
  assert inception.resolve_weights(path) == path
  graphdef, state = inception.load_inception(path)
  flat = dict(nnx.to_flat_state(state))
  np.testing.assert_array_equal(np.asarray(flat[('fc', 'bias')][...]), np.zeros(1008))


def test_eval_command_without_weights_fails_before_restoring(tmp_path):
  """`make eval-fid` on CIFAR-10 with no weights: the instructions, no checkpoint touched."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [sys.executable, 'main.py', '--config=configs/cifar10.py', '--mode=eval',
             f'--workdir={tmp_path}/run', '--config.eval.num_batches=0',
             f'--config.eval.cache_dir={tmp_path}/cache', '--config.eval.download=False']
  result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=120,
                          env=subprocesses.env())
  assert result.returncode != 0
  assert inception.WEIGHTS_URL in result.stderr
  assert 'tools/convert_inception_weights.py' in result.stderr
  assert 'No checkpoint' not in result.stderr  # The weights are checked first.
