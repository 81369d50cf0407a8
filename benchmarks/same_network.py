"""Our U-Net and its PyTorch transcription (benchmarks/unet_torch.py): proof that they are the same.

  .venv/bin/python benchmarks/same_network.py --peer-python=.venv-peer/bin/python
  .venv/bin/python benchmarks/bench_peer.py --check-same-network          (the same)

For each size (`--sizes`): 'tiny' (bench_peer.py's config at 16 channels, (1, 2), 2 blocks,
attention at 16x16 in 2 heads of 16: every kind of layer, small) and 'bench' (bench_peer.py's
network of ours, 35.2M parameters). Our U-Net is built as the engine builds it
(`methods.create(config).create_network`), its parameters are perturbed (the zero-initialised
convs would make every output 0 and hide any error), and it runs once on random inputs. An .npz
holds the parameters under the PyTorch module's names and in its layouts (`torch_state_dict`:
conv kernels HWIO -> OIHW, linear kernels transposed, GroupNorm scale -> weight), the inputs and
our output in NCHW, and the network's arguments. The peer venv's python then runs
`same_network_torch.py --check` on it: unet_torch.UNet built from those arguments must have our
parameter count exactly, take the parameters with `load_state_dict(strict=True)` (every name
and shape) and give our output within `--tolerance` (max abs difference, default 1e-4).

`--spec=PATH` also writes what the PyTorch side of bench-peer's same-network timing needs
(`training_spec`: the network's arguments, the loss, the optimizer and the sampler of the
'bench' config). Prints one JSON object; exit status 1 when a check fails.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (no jax at import)
import bench_peer  # noqa: E402

TORCH_SIDE = os.path.join(bench.REPO_ROOT, 'benchmarks', 'same_network_torch.py')
# Overrides on top of bench_peer.OURS per size; 'bench' is bench-peer's network itself.
SIZES = {
    'tiny': ('model.base_channels=16', 'model.channel_multipliers=(1,2)',
             'model.num_res_blocks=2', 'model.attention_resolutions=(16,)', 'model.head_dim=16'),
    'bench': (),
}
TORCH_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}  # Flax -> PyTorch.


def build_config(size: str, ours: tuple[str, ...] = ()):
  """bench-peer's config of ours (bench_peer.OURS, then `ours`), then the size's overrides."""
  return bench.case_config(bench_peer.CASE, list(bench_peer.OURS) + list(ours) + list(SIZES[size]))


def network_kwargs(config, method) -> dict[str, Any]:
  """The arguments of unet.UNet (and unet_torch.UNet) that the image task builds from `config`."""
  if method.task.num_classes:
    raise ValueError('The PyTorch transcription is unconditional: set '
                     'data.class_conditional=False.')
  model = config.model
  return {
      'in_channels': 2 * method.bit_channels,
      'out_channels': method.diffusion.output_channels(method.values_per_position),
      'out_kernel_size': 1 if method.diffusion.output == 'softmax' else 3,
      'image_size': config.data.image_size, 'base_channels': model.base_channels,
      'channel_multipliers': list(model.channel_multipliers),
      'num_res_blocks': model.num_res_blocks,
      'attention_resolutions': list(model.attention_resolutions), 'head_dim': model.head_dim,
      'dropout': model.dropout,
  }


def training_spec(config, method) -> dict[str, Any]:
  """What same_network_torch.py needs to run our train step and sampler on the same network.

  Raises ValueError for settings that it does not transcribe.
  """
  diffusion, optimizer, sampling = method.diffusion, config.optimizer, config.sampling
  wanted = {'diffusion.prediction': (diffusion.prediction, 'x0'),
            'diffusion.loss': (diffusion.loss, 'l2'),
            'diffusion.output': (diffusion.output, 'bits'),
            'diffusion.schedule': (config.diffusion.schedule, 'cosine'),
            'diffusion.label_dropout': (diffusion.label_dropout, 0.0),
            'bits.encoding': (diffusion.codec.encoding, 'binary'),
            'optimizer.weight_decay': (optimizer.weight_decay, 0.0),
            'training.microbatch_size': (config.training.microbatch_size, 0),
            'sampling.sampler': (sampling.sampler, 'ddim'), 'sampling.td': (sampling.td, 0.0)}
  wrong = {key: have for key, (have, want) in wanted.items() if have != want}
  if wrong:
    raise ValueError(f'same_network_torch.py transcribes only {wanted}; got {wrong}.')
  return {
      'network': network_kwargs(config, method),
      'image_shape': [config.data.channels, config.data.image_size, config.data.image_size],
      'num_bits': diffusion.codec.num_bits, 'bit_scale': diffusion.codec.scale,
      'self_condition_rate': diffusion.self_condition_rate,
      # optax.adam's defaults for eps and eps_root; the warm-up of engine.learning_rate_schedule.
      'optimizer': {'learning_rate': optimizer.learning_rate,
                    'warmup_steps': optimizer.warmup_steps, 'b1': optimizer.b1,
                    'b2': optimizer.b2, 'eps': 1e-8, 'grad_clip_norm': optimizer.grad_clip_norm,
                    'ema_decay': optimizer.ema_decay},
      'sampling_self_condition': bool(method.self_condition),
  }


def _names(path) -> list[str]:
  """A tree path of an nnx.State as names: ['down', '0', 'res', 'conv0', 'kernel']."""
  keys = [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]
  return keys[:-1] if keys and keys[-1] == 'value' else keys  # nnx.Param's own '.value' level.


def torch_state_dict(model) -> dict[str, np.ndarray]:
  """Our U-Net's parameters under unet_torch.UNet's names, in PyTorch's layouts (float32).

  'down/0/res/conv0/kernel' [3, 3, in, out] -> 'down.0.res.conv0.weight' [out, in, 3, 3]; dense
  kernels [in, out] -> weights [out, in]; GroupNorm 'scale' -> 'weight'; biases unchanged.
  """
  import jax
  from flax import nnx

  flat, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))
  state = {}
  for path, leaf in flat:
    keys = _names(path)
    *module, name = keys
    if name not in TORCH_NAMES:
      raise ValueError(f'No PyTorch counterpart for parameter {"/".join(keys)}.')
    value = np.asarray(leaf, np.float32)
    if name == 'kernel' and value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw].
    elif name == 'kernel' and value.ndim == 2:
      value = value.T  # [in, out] -> [out, in].
    elif value.ndim != 1:
      raise ValueError(f'Unexpected shape {value.shape} of {"/".join(keys)}.')
    state['.'.join(module + [TORCH_NAMES[name]])] = np.ascontiguousarray(value)
  return state


def perturb(model, seed: int = 0) -> None:
  """Replaces every parameter in place: kernels N(0, 1 / fan_in), scales 1 + N(0, 0.1^2),
  biases N(0, 0.01^2), so that no layer is zero or the identity."""
  import jax
  from flax import nnx

  state = nnx.state(model, nnx.Param)
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  rng = np.random.default_rng(seed)
  leaves = []
  for path, leaf in flat:
    name = _names(path)[-1]
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if name == 'kernel':
      leaves.append(noise / math.sqrt(math.prod(leaf.shape[:-1])))
    elif name == 'scale':
      leaves.append(1.0 + 0.1 * noise)
    else:
      leaves.append(0.01 * noise)
  nnx.update(model, jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(v)
                                                            for v in leaves]))


def export(size: str, path: str, batch_size: int = 2, ours: tuple[str, ...] = (),
           seed: int = 0) -> dict[str, Any]:
  """Writes the .npz of one size (parameters, inputs, our output; see the module docstring)."""
  import jax
  from flax import nnx

  from bit_diffusion import engine as engine_lib
  from bit_diffusion import methods
  from bit_diffusion import unet

  config = build_config(size, ours)
  method = methods.create(config)
  model = method.create_network(engine_lib.seed_key(config.seed, 'init'))
  perturb(model, seed)
  kwargs = network_kwargs(config, method)
  rng = np.random.default_rng(seed + 1)
  size_px = kwargs['image_size']
  x = rng.standard_normal((batch_size, size_px, size_px, kwargs['in_channels']), np.float32)
  # Every other example at 1e-3 of the scale: the first GroupNorm's variance is then near its
  # epsilon, which a wrong epsilon would show.
  x[1::2] *= 1e-3
  gamma = rng.uniform(0.0, 1.0, (batch_size,)).astype(np.float32)
  graphdef, params = nnx.split(model)
  start = time.perf_counter()
  output = jax.jit(lambda p, x, g: nnx.merge(graphdef, p)(x, g))(params, x, gamma)
  output = np.asarray(output)
  seconds = time.perf_counter() - start
  state = torch_state_dict(model)
  num_params = unet.count_params(model)
  np.savez(path, **{f'param/{name}': value for name, value in state.items()},
           input=x.transpose(0, 3, 1, 2), gamma=gamma, expected=output.transpose(0, 3, 1, 2),
           network=json.dumps(kwargs), num_params=num_params)
  return {'size': size, 'network': kwargs, 'num_params': num_params, 'batch_size': batch_size,
          'ours_forward_seconds': seconds, 'ours_output_max_abs': float(np.abs(output).max())}


def check(peer_python: str, sizes: tuple[str, ...] = ('tiny', 'bench'),
          tolerance: float = 1e-4, ours: tuple[str, ...] = (), compiled: bool = False,
          log=print) -> dict[str, Any]:
  """Exports each size and runs the PyTorch side's check on it; {'passed': bool, size: ...}."""
  report: dict[str, Any] = {'tolerance': tolerance, 'passed': True}
  if not os.path.exists(peer_python):
    return {'passed': False, 'error': f'{peer_python} not found: run `make .venv-peer/.installed`.'}
  with tempfile.TemporaryDirectory(prefix='same_network_') as tmp:
    for size in sizes:
      path = os.path.join(tmp, f'{size}.npz')
      log(f'same network, {size}: our U-Net -> {path}')
      result = export(size, path, ours=ours)
      command = [peer_python, '-I', TORCH_SIDE, f'--check={path}', f'--tolerance={tolerance}']
      if compiled:
        command.append('--compiled')
      log(shlex.join(command))
      process = subprocess.run(command, stdout=subprocess.PIPE, text=True)
      try:
        result['torch'] = json.loads(process.stdout)
      except json.JSONDecodeError:
        result['torch'] = {'error': f'exit code {process.returncode}, no JSON'}
      result['passed'] = bool(process.returncode == 0 and result['torch'].get('passed'))
      report['passed'] &= result['passed']
      report[size] = result
      log(f'same network, {size}: {"passed" if result["passed"] else "FAILED"} '
          f'({json.dumps({k: v for k, v in result["torch"].items() if k != "network"})})')
  return report


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
  parser.add_argument('--peer-python', default=os.path.join(bench.REPO_ROOT, '.venv-peer', 'bin',
                                                            'python'))
  parser.add_argument('--sizes', default='tiny,bench', help=f'Comma-separated, of {list(SIZES)}.')
  parser.add_argument('--tolerance', type=float, default=1e-4)
  parser.add_argument('--compiled', action='store_true',
                      help='Also check the torch.compile of the PyTorch U-Net (slow to compile).')
  parser.add_argument('--ours', action='append', default=[], metavar='SECTION.FIELD=VALUE',
                      help="bench_peer.py's --ours: changes to our config.")
  parser.add_argument('--spec', default='', help="Write the 'bench' size's training_spec here.")
  args = parser.parse_args(argv)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  log = lambda message: print(f'[same-network] {message}', file=sys.stderr, flush=True)
  sizes = tuple(s for s in args.sizes.split(',') if s)
  unknown = set(sizes) - set(SIZES)
  if unknown:
    parser.error(f'Unknown sizes {sorted(unknown)}; choose from {list(SIZES)}.')
  report = check(args.peer_python, sizes, args.tolerance, tuple(args.ours), args.compiled, log)
  if args.spec:
    from bit_diffusion import methods
    config = build_config('bench', tuple(args.ours))
    report['spec'] = training_spec(config, methods.create(config))
    with open(args.spec, 'w') as f:
      json.dump(report['spec'], f, indent=2)
  print(json.dumps(report, indent=2))
  return 0 if report['passed'] else 1


if __name__ == '__main__':
  sys.exit(main())
