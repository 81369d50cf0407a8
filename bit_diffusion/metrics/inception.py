"""The FID Inception-v3 (pool3, 2048 features) in Flax NNX, and its weights.

The network is the "inception-2015-12-05" graph of TensorFlow that TF-GAN, TTUR (the original
FID code) and the paper use. pytorch-fid republishes its weights as a PyTorch state dict,
`pt_inception-2015-12-05-6726825d.pth`; this module is a port of pytorch-fid's
`src/pytorch_fid/inception.py` (torchvision's `Inception3` patched by `FIDInceptionA`, `C`,
`E_1`, `E_2`), with parameter names equal to the state dict's keys:

- `BasicConv2d`: conv without bias, BatchNorm (eps 1e-3, running statistics), ReLU;
- the average pools of the A, C and first E blocks exclude the zero padding
  (`count_include_pad=False`, as TensorFlow); the second E block (`Mixed_7c`) max-pools;
- `fc`: 2048 -> 1008 classes (the 2015 graph has 1008 outputs).

Preprocessing, as pytorch-fid: images in [0, 1] are resized to 299x299 bilinearly
(`align_corners=False`, no antialiasing), then scaled to [-1, 1]; grey images are repeated to
three channels. Layout is NHWC.

Outputs: pool3 features [B, 2048] (FID, precision/recall) and logits [B, 1008] computed as in the
original Inception Score code (Salimans et al. 2016): pool3 times the softmax weights, without
the bias.

Weights are read from a `.npz` holding the state dict's arrays under its own keys (written by
`tools/convert_inception_weights.py`, which needs PyTorch). `resolve_weights` finds or makes that
file and fails at once, with instructions, when it cannot.
"""

import functools
import os
import urllib.parse
import urllib.request
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bit_diffusion import downloads
from bit_diffusion import param_keys

WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               'pt_inception-2015-12-05-6726825d.pth')
PTH_NAME = 'pt_inception-2015-12-05-6726825d.pth'
NPZ_NAME = 'pt_inception-2015-12-05-6726825d.npz'
INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008


class BasicConv2d(nnx.Module):
  """Conv (no bias), BatchNorm with running statistics (eps 1e-3), ReLU."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size, stride: int = 1,
               padding=0, *, rngs: nnx.Rngs):
    kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    padding = (padding, padding) if isinstance(padding, int) else padding
    self.conv = nnx.Conv(in_channels, out_channels, kernel_size, strides=stride,
                         padding=tuple((p, p) for p in padding), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(out_channels, epsilon=1e-3, use_running_average=True, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1, averaging over the valid pixels only (TensorFlow's SAME)."""
  return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                      count_include_pad=False)


def _max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
  pad = ((padding, padding), (padding, padding))
  return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=pad)


class FIDInceptionA(nnx.Module):
  """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and pooled branches; 35x35."""

  def __init__(self, in_channels: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(in_channels, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(in_channels, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(in_channels, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_3x3(x))], -1)


class InceptionB(nnx.Module):
  """Mixed_6a: 35x35 -> 17x17 (torchvision's block, unchanged by pytorch-fid)."""

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, _max_pool(x, 2)], -1)


class FIDInceptionC(nnx.Module):
  """Mixed_6b..e: factorised 7x7 branches; 17x17."""

  def __init__(self, in_channels: int, channels_7x7: int, *, rngs: nnx.Rngs):
    c7 = channels_7x7
    self.branch1x1 = BasicConv2d(in_channels, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(in_channels, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv2d(in_channels, 192, 1, rngs=rngs)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = layer(bd)
    return jnp.concatenate([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool_3x3(x))], -1)


class InceptionD(nnx.Module):
  """Mixed_7a: 17x17 -> 8x8 (torchvision's block, unchanged by pytorch-fid)."""

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv2d(in_channels, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return jnp.concatenate([b3, b7, _max_pool(x, 2)], -1)


class FIDInceptionE(nnx.Module):
  """Mixed_7b (average pool, padding excluded) and Mixed_7c (max pool, the 2015 graph's quirk)."""

  def __init__(self, in_channels: int, pool: str, *, rngs: nnx.Rngs):
    self.pool = pool
    self.branch1x1 = BasicConv2d(in_channels, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(in_channels, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(in_channels, 192, 1, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], -1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], -1)
    pooled = _avg_pool_3x3(x) if self.pool == 'avg' else _max_pool(x, 1, padding=1)
    return jnp.concatenate([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], -1)


class FIDInceptionV3(nnx.Module):
  """pytorch-fid's `fid_inception_v3()`: [B, 299, 299, 3] in [-1, 1] -> pool3, logits."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = FIDInceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = FIDInceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = FIDInceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = FIDInceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = FIDInceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = FIDInceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = FIDInceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = FIDInceptionE(1280, 'avg', rngs=rngs)
    self.Mixed_7c = FIDInceptionE(2048, 'max', rngs=rngs)
    self.fc = nnx.Linear(NUM_FEATURES, NUM_LOGITS, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [B, 299, 299, 3] in [-1, 1] -> (pool3 [B, 2048], unbiased logits [B, 1008])."""
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 147, 147, 64]
    x = _max_pool(x, 2)  # [B, 73, 73, 64]
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [B, 71, 71, 192]
    x = _max_pool(x, 2)  # [B, 35, 35, 192]
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                  self.Mixed_7c):
      x = block(x)  # ... [B, 17, 17, 768] ... [B, 8, 8, 2048]
    pool3 = jnp.mean(x, axis=(1, 2))  # [B, 2048]
    return pool3, pool3 @ self.fc.kernel[...]  # [B, 1008], no bias (Salimans et al.).


def preprocess(images: jax.Array) -> jax.Array:
  """[B, H, W, 1 or 3] floats in [0, 1] -> [B, 299, 299, 3] in [-1, 1], as pytorch-fid.

  Bilinear with half-pixel centres and no antialiasing is PyTorch's
  `F.interpolate(mode='bilinear', align_corners=False)`.
  """
  images = images.astype(jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  batch = images.shape[0]
  images = jax.image.resize(images, (batch, INPUT_SIZE, INPUT_SIZE, 3), 'bilinear',
                            antialias=False)
  return 2.0 * images - 1.0


# ---------------------------------------------------------------------------------------------
# Weights.

_TORCH_TO_NNX = {'conv.weight': 'conv.kernel', 'bn.weight': 'bn.scale', 'bn.bias': 'bn.bias',
                 'bn.running_mean': 'bn.mean', 'bn.running_var': 'bn.var',
                 'fc.weight': 'fc.kernel', 'fc.bias': 'fc.bias'}


def _flatten(tree: dict, prefix: str = '') -> dict[str, object]:
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    flat.update(_flatten(value, name + '.') if isinstance(value, dict) else {name: value})
  return flat


def _unflatten(flat: dict[str, object]) -> dict:
  tree = {}
  for name, value in flat.items():
    *parents, leaf = name.split('.')
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


@functools.lru_cache(maxsize=1)
def _abstract_inception() -> tuple[nnx.GraphDef, nnx.State]:
  return nnx.split(nnx.eval_shape(lambda: FIDInceptionV3(rngs=param_keys.ParamKeys(0))))


def abstract_inception() -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, a fresh state of ShapeDtypeStructs) of the network; nothing is allocated."""
  graphdef, abstract_state = _abstract_inception()  # Tracing the constructor takes seconds.
  return graphdef, jax.tree.map(lambda x: x, abstract_state)


def state_from_state_dict(abstract_state: nnx.State, arrays: dict[str, np.ndarray]
                          ) -> nnx.State:
  """The network's state from pytorch-fid's state dict (numpy arrays under its keys), checked.

  Conv kernels go from [out, in, kh, kw] to [kh, kw, in, out], the fc weight is transposed;
  `num_batches_tracked` is ignored. Missing, unexpected or misshapen entries raise ValueError.
  """
  wanted = _flatten(nnx.to_pure_dict(abstract_state))
  values = {}
  for key, value in arrays.items():
    if key.endswith('num_batches_tracked'):
      continue
    suffix = next((s for s in _TORCH_TO_NNX if key.endswith(s)), None)
    name = key[:-len(suffix)] + _TORCH_TO_NNX[suffix] if suffix else None
    if name not in wanted:
      raise ValueError(f'Unexpected key {key!r} in the Inception weights.')
    value = np.asarray(value, np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    elif suffix == 'fc.weight':
      value = value.T
    if value.shape != tuple(wanted[name].shape):
      raise ValueError(f'{key}: shape {value.shape} after transposition, the network has '
                       f'{tuple(wanted[name].shape)}.')
    values[name] = jnp.asarray(value)
  missing = sorted(set(wanted) - set(values))
  if missing:
    raise ValueError(f'The Inception weights lack {len(missing)} entries, e.g. {missing[:3]}.')
  nnx.replace_by_pure_dict(abstract_state, _unflatten(values))
  return abstract_state


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """A state dict of pytorch-fid's keys and shapes with random values (tests; no download).

  Conv and fc weights are Gaussian with variance 2 / fan-in; BatchNorm is the identity.
  """
  _, abstract_state = abstract_inception()
  rng = np.random.default_rng(seed)
  nnx_to_torch = {v: k for k, v in _TORCH_TO_NNX.items()}
  arrays = {}
  for name, leaf in _flatten(nnx.to_pure_dict(abstract_state)).items():
    suffix = next(s for s in nnx_to_torch if name.endswith(s))
    key = name[:-len(suffix)] + nnx_to_torch[suffix]
    shape = tuple(leaf.shape)
    if suffix == 'conv.kernel':
      kh, kw, cin, cout = shape
      value = rng.standard_normal((cout, cin, kh, kw), np.float32) * np.sqrt(2 / (kh * kw * cin))
    elif suffix == 'fc.kernel':
      value = rng.standard_normal(shape[::-1], np.float32) * np.sqrt(1 / shape[0])
    elif suffix in ('bn.scale', 'bn.var'):
      value = np.ones(shape)
    else:
      value = np.zeros(shape)
    arrays[key] = value.astype(np.float32)
  return arrays


def default_cache_dir() -> str:
  """$BIT_DIFFUSION_CACHE, else $XDG_CACHE_HOME/bit_diffusion, else ~/.cache/bit_diffusion."""
  if os.environ.get('BIT_DIFFUSION_CACHE'):
    return os.environ['BIT_DIFFUSION_CACHE']
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'bit_diffusion')


def _instructions(npz_path: str, pth_path: str) -> str:
  return (
      'FID and Inception Score need the FID Inception-v3 weights (the TF-GAN/TTUR '
      '"inception-2015-12-05" network) that pytorch-fid publishes as\n'
      f'  {WEIGHTS_URL}\n'
      f'converted once to {npz_path}. Either:\n'
      f'  1. place the .pth at {pth_path} and run\n'
      f'       python tools/convert_inception_weights.py {pth_path} {npz_path}\n'
      '     (needs PyTorch: pip install torch; or convert on any machine that has it and copy '
      'the .npz), or\n'
      '  2. pass a converted file with --config.eval.inception_weights=PATH.npz.')


def resolve_weights(path: str = '', cache_dir: str = '', download: bool = True) -> str:
  """Returns the path of the converted `.npz` weights, making it if possible.

  `path`: an explicit `.npz` (or a `.pth`, converted beside it when PyTorch is installed);
  '' uses CACHE_DIR/pt_inception-2015-12-05-6726825d.npz. When that is missing the `.pth` is
  looked for in the cache, downloaded there if the host answers (`download`), and converted
  (PyTorch needed). Anything missing raises FileNotFoundError at once with instructions: no
  other network or features are ever substituted.
  """
  cache_dir = cache_dir or default_cache_dir()
  if path and path.endswith('.npz'):
    if os.path.exists(path):
      return path
    raise FileNotFoundError(f'{path} does not exist.\n' +
                            _instructions(path, os.path.join(cache_dir, PTH_NAME)))
  npz_path = os.path.join(cache_dir, NPZ_NAME)
  pth_path = path or os.path.join(cache_dir, PTH_NAME)
  if not path and os.path.exists(npz_path):
    return npz_path
  if path:
    npz_path = os.path.splitext(path)[0] + '.npz'
    if os.path.exists(npz_path):
      return npz_path
  if not os.path.exists(pth_path):
    if not download:
      raise FileNotFoundError(_instructions(npz_path, pth_path))
    reason = downloads.unreachable(urllib.parse.urlsplit(WEIGHTS_URL).hostname)
    if reason:
      raise FileNotFoundError(f'Cannot download the Inception weights: {reason}.\n' +
                              _instructions(npz_path, pth_path))
    os.makedirs(os.path.dirname(os.path.abspath(pth_path)), exist_ok=True)
    part = f'{pth_path}.{os.getpid()}.part'
    urllib.request.urlretrieve(WEIGHTS_URL, part)
    os.replace(part, pth_path)
  try:
    import torch  # noqa: F401
  except ImportError:
    raise FileNotFoundError(f'{pth_path} is there, but converting it needs PyTorch, which is '
                            'not installed.\n' + _instructions(npz_path, pth_path)) from None
  convert_pth(pth_path, npz_path)
  return npz_path


def convert_pth(pth_path: str, npz_path: str) -> None:
  """pytorch-fid's .pth state dict -> .npz of numpy arrays under the same keys (needs torch)."""
  import torch
  state_dict = torch.load(pth_path, map_location='cpu', weights_only=True)
  arrays = {key: value.numpy() for key, value in state_dict.items()}
  os.makedirs(os.path.dirname(os.path.abspath(npz_path)), exist_ok=True)
  part = f'{npz_path}.{os.getpid()}.part.npz'  # Unique per process; renamed at once.
  np.savez(part, **arrays)
  os.replace(part, npz_path)


def load_inception(weights_path: Optional[str]) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, state) of the network from a converted `.npz`; random weights when None."""
  graphdef, abstract_state = abstract_inception()
  if weights_path is None:
    arrays = random_state_dict()
  else:
    with np.load(weights_path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  return graphdef, state_from_state_dict(abstract_state, arrays)


def make_apply_fn(graphdef: nnx.GraphDef):
  """fn(state, images [B, H, W, C] in [0, 1]) -> (pool3 [B, 2048], logits [B, 1008])."""

  def apply(state, images):
    return nnx.merge(graphdef, state)(preprocess(images))

  return apply
