"""The bench-peer U-Net's 3x3 convolutions alone, in JAX (XLA:CPU) and in PyTorch: which kernels
the same-network comparison's time goes to.

  .venv/bin/python benchmarks/conv_kernels.py [--batch-sizes=8,32]        # JAX
  .venv-peer/bin/python benchmarks/conv_kernels.py [--batch-sizes=8,32]   # PyTorch

For each convolution shape of the 35.2M U-Net of `make bench-peer` (3x3, stride 1, same padding:
128 channels at 32x32, 256 at 16x16, 8x8 and 4x4, and the up path's concatenated inputs) and
each batch size, times the forward convolution (what the sampler runs) and the forward with the
input and weight gradients (what the train step runs), as milliseconds per call (the median of
`--repeats` after a warm-up) and GFLOP/s (2 per multiply-add; the two gradients are twice the
forward). JAX: jitted, with XLA's default CPU options (the sampler's) and with the train step's
(`cpu.ynn_fusions`, bit_diffusion/cpu.py); PyTorch: eager (its oneDNN kernels), NCHW and
channels_last. Prints one JSON object: the machine (`cpu.machine_report()` on the JAX side), then
one row per case. docs/benchmarks.md compares the two.
"""

import argparse
import json
import os
import statistics
import sys

_BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_BENCHMARKS, os.path.dirname(_BENCHMARKS)]  # Run with -I: neither is on the path.
import timing  # noqa: E402  (standard library only)

# (height = width, input channels, output channels) of the bench-peer U-Net's 3x3 convolutions.
SHAPES = ((32, 128, 128), (32, 256, 128), (16, 256, 256), (16, 512, 256), (8, 256, 256),
          (4, 256, 256))


def _median_ms(call, repeats: int) -> float:
  call()  # Warm-up (and the compile, for JAX).
  seconds = timing.timed_calls(lambda _: call(), min_steps=repeats, min_seconds=0.0,
                               max_steps=repeats)
  return statistics.median(seconds) * 1e3


def _row(framework, variant, batch, size, cin, cout, forward_ms, train_ms):
  flops = 2 * batch * size * size * cin * cout * 9
  return {'framework': framework, 'variant': variant, 'batch': batch, 'size': size,
          'in_channels': cin, 'out_channels': cout, 'forward_ms': forward_ms,
          'forward_gflops_per_sec': flops / forward_ms / 1e6, 'train_ms': train_ms,
          'train_gflops_per_sec': 3 * flops / train_ms / 1e6}


def run_jax(batch_sizes, repeats):
  import jax
  import jax.numpy as jnp

  from bit_diffusion import cpu
  from configs import common

  def conv(x, w):  # NHWC, HWIO, as bit_diffusion/unet.py's nnx.Conv.
    return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def conv_and_grads(x, w):
    out, vjp = jax.vjp(conv, x, w)
    return vjp(jnp.ones_like(out))

  options = {'xla_default': None,
             'train_step': cpu.compiler_options(common.cpu_config())}
  rows = []
  for batch in batch_sizes:
    for size, cin, cout in SHAPES:
      keys = jax.random.split(jax.random.PRNGKey(0))
      x = jax.random.normal(keys[0], (batch, size, size, cin))
      w = jax.random.normal(keys[1], (3, 3, cin, cout)) * 0.05
      for variant, compiler_options in options.items():
        forward = jax.jit(conv, compiler_options=compiler_options)
        train = jax.jit(conv_and_grads, compiler_options=compiler_options)
        rows.append(_row('jax', variant, batch, size, cin, cout,
                         _median_ms(lambda: forward(x, w).block_until_ready(), repeats),
                         _median_ms(lambda: jax.block_until_ready(train(x, w)), repeats)))
  return rows


def run_torch(batch_sizes, repeats):
  import torch
  rows = []
  for batch in batch_sizes:
    for size, cin, cout in SHAPES:
      for variant in ('nchw', 'channels_last'):
        memory_format = (torch.channels_last if variant == 'channels_last'
                         else torch.contiguous_format)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, cin, size, size, generator=generator).to(
            memory_format=memory_format).requires_grad_()
        w = (torch.randn(cout, cin, 3, 3, generator=generator) * 0.05).to(
            memory_format=memory_format).requires_grad_()

        def forward():
          with torch.no_grad():
            torch.nn.functional.conv2d(x, w, padding=1)

        def train():
          out = torch.nn.functional.conv2d(x, w, padding=1)
          torch.autograd.grad(out, (x, w), torch.ones_like(out))

        rows.append(_row('torch', variant, batch, size, cin, cout,
                         _median_ms(forward, repeats), _median_ms(train, repeats)))
  return rows


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch-sizes', default='8,32')
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--framework', choices=('auto', 'jax', 'torch'), default='auto',
                      help='auto: JAX if it imports (the main venv), else PyTorch.')
  args = parser.parse_args(argv)
  batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  framework = args.framework
  if framework == 'auto':
    try:
      import jax  # noqa: F401
      framework = 'jax'
    except ImportError:
      framework = 'torch'
  if framework == 'jax':
    from bit_diffusion import cpu
    machine = cpu.machine_report()
    rows = run_jax(batch_sizes, args.repeats)
  else:
    import torch
    machine = {'torch': torch.__version__, 'threads': torch.get_num_threads(),
               'cpu_capability': torch.backends.cpu.get_cpu_capability()}
    rows = run_torch(batch_sizes, args.repeats)
  result = {'framework': framework, 'machine': machine, 'rows': rows}
  print(json.dumps(result, indent=1))
  for row in rows:
    print(f"{row['framework']:5s} {row['variant']:13s} b{row['batch']:<3d} {row['size']:2d}x"
          f"{row['size']:<2d} {row['in_channels']:3d}->{row['out_channels']:3d}  forward "
          f"{row['forward_ms']:8.2f} ms {row['forward_gflops_per_sec']:6.1f} GFLOP/s  train "
          f"{row['train_ms']:8.2f} ms {row['train_gflops_per_sec']:6.1f} GFLOP/s", file=sys.stderr)
  return result


if __name__ == '__main__':
  main()
