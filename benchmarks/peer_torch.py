"""The PyTorch port's side of `bench_peer.py`; runs in .venv-peer with only torch and the port.

  .venv-peer/bin/python -I benchmarks/peer_torch.py --batch-sizes=8,32 --output=/tmp/peer.json

Measures the PyPI package `bit-diffusion` (lucidrains' PyTorch port, module `bit_diffusion`) on
32x32x3 8-bit images, unconditional, with the port's defaults: `Unet(dim=64, channels=3)` and
`BitDiffusion(model, image_size=32, timesteps=STEPS, use_ddim=True)` (our benchmark samples
with DDIM too; the port's default is its DDPM sampler, the same network cost per step).

Train step: `loss = diffusion(images); loss.backward(); adam.step(); adam.zero_grad()` with the
port's trainer's Adam (lr 1e-4, betas 0.9/0.99). The port self-conditions the whole batch with
probability 0.5 per step (`torch.rand(1) < 0.5`): a forward hook counts the network calls of each
step (2 when self-conditioned), and the expected step time is the mean of the medians of the two
kinds (the plain mean when only one kind was timed). Sampling: `diffusion.sample(batch)`.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products, forward and
backward) of one step; per step in expectation: the plain step + 0.5 x one network forward.

Must be run with `-I` (isolated): the port's module is named `bit_diffusion`, like ours.
Prints one JSON object to stdout; `--output=PATH` also writes it.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # Run with -I: not on the path.

import timing  # noqa: E402

os.environ.setdefault('TQDM_DISABLE', '1')  # The port's sampler shows a tqdm bar per batch.


def _stub_torchvision() -> None:
  """The port imports torchvision at the top for its dataset and image saving only.

  PyPI's torchvision does not import beside the CPU build of torch (an operator is missing), and
  the model and diffusion classes need none of it, so an empty module stands in.
  """
  try:
    import torchvision  # noqa: F401
    return
  except Exception:  # Not installed, or broken beside this torch.
    pass
  for name in ('torchvision', 'torchvision.transforms', 'torchvision.utils'):
    sys.modules.pop(name, None)
  package = types.ModuleType('torchvision')
  package.transforms = types.ModuleType('torchvision.transforms')
  package.utils = types.ModuleType('torchvision.utils')
  sys.modules.update({'torchvision': package, 'torchvision.transforms': package.transforms,
                      'torchvision.utils': package.utils})


def _log(message: str) -> None:
  print(f'[peer {time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


def count_flops(fn) -> float:
  """FLOPs that PyTorch's FlopCounterMode counts while `fn()` runs."""
  from torch.utils.flop_counter import FlopCounterMode
  with FlopCounterMode(display=False) as counter:
    fn()
  return float(counter.get_total_flops())


def bench_matmul(size: int, repeats: int) -> dict:
  """GFLOP/s of a float32 `size` x `size` matmul in torch (median of `repeats`)."""
  import torch
  a, b = torch.randn(size, size), torch.randn(size, size)
  torch.mm(a, b)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    torch.mm(a, b)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {'size': size, 'repeats': repeats, 'seconds_median': median,
          'gflops_per_sec': 2.0 * size**3 / median / 1e9}


def bench_batch(batch_size: int, args: argparse.Namespace) -> dict:
  """Train step and sampler of the port at one batch size."""
  import torch

  from bit_diffusion import BitDiffusion
  from bit_diffusion import Unet

  torch.manual_seed(0)
  model = Unet(dim=args.dim, channels=3)
  diffusion = BitDiffusion(model, image_size=32, timesteps=args.sample_steps, use_ddim=True)
  optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
  calls = [0]
  model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
  # The port takes floats in [0, 1] (as ToTensor gives) and truncates x * 255 to integers; the
  # report's `bits_roundtrip_exact` checks that k / 255 comes back as k for all 256 levels.
  images = torch.randint(0, 256, (batch_size, 3, 32, 32)).float() / 255.0

  def train_step() -> int:
    calls[0] = 0
    loss = diffusion(images)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return calls[0]

  result = {'batch_size': batch_size}
  with torch.no_grad():  # As the port's self-conditioning pass and its sampler run it.
    forward_flops = count_flops(lambda: model(torch.randn(batch_size, 24, 32, 32),
                                              torch.rand(batch_size)))
  step_flops = None
  for _ in range(20):  # The first step that does not self-condition (p = 0.5 each).
    flops = count_flops(train_step)
    if calls[0] == 1:
      step_flops = flops
      break
  if step_flops is None:
    step_flops = flops - forward_flops
  result['flops_per_forward'] = forward_flops
  result['flops_per_step_plain'] = step_flops
  result['flops_per_step_self_conditioned'] = step_flops + forward_flops
  expected_flops = step_flops + 0.5 * forward_flops
  result['flops_per_step'] = expected_flops
  result['flops_per_image'] = expected_flops / batch_size

  for _ in range(args.warmup_steps):
    train_step()
  passes = []  # 1 or 2 network passes per timed step (the port self-conditions at random).
  seconds = timing.timed_calls(lambda i: passes.append(train_step()), min_steps=args.min_steps,
                               min_seconds=args.min_seconds, max_steps=args.max_steps)
  steps = len(seconds)
  plain = [s for s, n in zip(seconds, passes) if n == 1]
  self_cond = [s for s, n in zip(seconds, passes) if n == 2]
  if plain and self_cond:
    expected = 0.5 * statistics.median(plain) + 0.5 * statistics.median(self_cond)
  else:
    expected = statistics.mean(plain + self_cond)
  result.update(
      timed_steps=steps, self_conditioned_steps=len(self_cond), warmup_steps=args.warmup_steps,
      step_seconds_plain_median=statistics.median(plain) if plain else None,
      step_seconds_self_conditioned_median=statistics.median(self_cond) if self_cond else None,
      step_seconds_expected=expected, images_per_sec=batch_size / expected,
      gflops_per_sec=expected_flops / expected / 1e9)
  _log(f'  batch {batch_size} train: {expected * 1e3:.0f} ms per step (expected), '
       f'{batch_size / expected:.1f} images/s, {expected_flops / expected / 1e9:.1f} GFLOP/s')

  diffusion.eval()
  sampling = {'sampler': 'ddim', 'steps': args.sample_steps, 'batch_size': batch_size}
  # One network evaluation per step (the port always feeds the self-condition channels).
  per_eval = forward_flops
  sampling['flops_per_network_eval'] = per_eval
  sampling['flops_per_batch'] = per_eval * args.sample_steps
  start = time.perf_counter()
  diffusion.sample(batch_size=batch_size)
  sampling['first_call_seconds'] = time.perf_counter() - start
  batch_times = []
  for _ in range(args.sample_repeats):
    start = time.perf_counter()
    out = diffusion.sample(batch_size=batch_size)
    batch_times.append(time.perf_counter() - start)
  assert tuple(out.shape) == (batch_size, 3, 32, 32)
  median = statistics.median(batch_times)
  sampling.update(timed_batches=len(batch_times), batch_seconds_median=median,
                  batch_seconds_all=batch_times, images_per_sec=batch_size / median,
                  gflops_per_sec=per_eval * args.sample_steps / median / 1e9)
  _log(f'  batch {batch_size} sampling: {median:.2f} s per batch, '
       f'{batch_size / median:.2f} images/s')
  return {'train': result, 'sampling': sampling}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  timing.add_arguments(parser)
  parser.add_argument('--dim', type=int, default=64, help="The port's Unet width (default 64).")
  parser.add_argument('--matmul-size', type=int, default=4096)
  parser.add_argument('--output', default='')
  args = parser.parse_args()
  args.max_steps = max(args.max_steps, args.min_steps)

  _stub_torchvision()
  import importlib.metadata

  import torch
  from bit_diffusion.bit_diffusion import bits_to_decimal
  from bit_diffusion.bit_diffusion import decimal_to_bits

  import bit_diffusion
  from bit_diffusion import Unet

  levels = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16)
  roundtrip = bits_to_decimal(decimal_to_bits(levels / 255.0)) * 255.0
  report = {
      'implementation': 'bit-diffusion (PyPI, PyTorch port)',
      'module_file': bit_diffusion.__file__,
      'versions': {'python': platform.python_version(), 'torch': torch.__version__,
                   'bit-diffusion': importlib.metadata.version('bit-diffusion')},
      'torch_threads': torch.get_num_threads(),
      'model': {'class': 'Unet', 'dim': args.dim, 'dim_mults': [1, 2, 4, 8], 'channels': 3,
                'bits': 8, 'num_params': sum(p.numel() for p in Unet(args.dim).parameters())},
      'bits_roundtrip_exact': bool(torch.equal(roundtrip.round(), levels)),
      'bits_roundtrip_levels_wrong': int((roundtrip.round() != levels).sum()),
      'load_avg_start': list(os.getloadavg()),
  }
  if args.matmul_size:
    report['matmul'] = bench_matmul(args.matmul_size, 5)
    _log(f'torch matmul {args.matmul_size}: {report["matmul"]["gflops_per_sec"]:.1f} GFLOP/s')
  report['batches'] = {}
  for batch_size in [int(b) for b in args.batch_sizes.split(',') if b.strip()]:
    _log(f'batch {batch_size}')
    report['batches'][str(batch_size)] = bench_batch(batch_size, args)
  report['load_avg_end'] = list(os.getloadavg())
  text = json.dumps(report, indent=2)
  print(text)
  if args.output:
    with open(args.output, 'w') as f:
      f.write(text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
