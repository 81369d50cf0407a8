"""GroupNorm + SiLU in isolation: `nnx.GroupNorm` against `bit_diffusion.unet.GroupNorm`.

  .venv/bin/python benchmarks/group_norm.py [--shape=8,32,32,256] [--repeats=40]

Times the forward pass and the forward pass with its gradient (parameters and input), jitted with
XLA's default CPU options (as the sampler) and with the train step's compiler options
(`cpu.ynn_fusions`, `bit_diffusion.cpu.compiler_options`), and checks that both modules
give the same output. Prints one line per module and option set (milliseconds per call, mean over
`--repeats` calls after a warm-up). Results and why the module is written out: docs/cpu.md,
"GroupNorm statistics as per-channel sums".
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bit_diffusion import cpu  # noqa: E402
from bit_diffusion import unet  # noqa: E402
from configs import common  # noqa: E402


def _mean_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats * 1e3


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--shape', default='8,32,32,256', help='b,h,w,c of the input.')
  parser.add_argument('--repeats', type=int, default=40)
  args = parser.parse_args(argv)
  shape = tuple(int(v) for v in args.shape.split(','))
  channels = shape[-1]
  groups = unet.num_groups(channels)
  x = jax.random.normal(jax.random.PRNGKey(0), shape) * 2.0 + 1.0
  option_sets = {'XLA default options': {},
                 'train step options': cpu.compiler_options(common.cpu_config()) or {}}
  modules = {
      'nnx.GroupNorm': nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-5, rngs=nnx.Rngs(0)),
      'unet.GroupNorm': unet.GroupNorm(channels, groups, 1e-5, jnp.float32, nnx.Rngs(0)),
  }
  outputs = {}
  for label, options in option_sets.items():
    for name, module in modules.items():
      graphdef, params = nnx.split(module)

      def forward(params, x, graphdef=graphdef):
        return jax.nn.silu(nnx.merge(graphdef, params)(x))

      def loss(params, x, forward=forward):
        return jnp.sum(forward(params, x) * x)

      forward_fn = jax.jit(forward).lower(params, x).compile(compiler_options=options)
      gradient_fn = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile(
          compiler_options=options)
      outputs[name] = forward_fn(params, x)
      forward_ms = _mean_ms(forward_fn, params, x, repeats=args.repeats)
      gradient_ms = _mean_ms(gradient_fn, params, x, repeats=args.repeats)
      print(f'{label:20s} {name:15s} forward {forward_ms:6.2f} ms   with gradient '
            f'{gradient_ms:6.2f} ms', flush=True)
  difference = float(jnp.max(jnp.abs(outputs['nnx.GroupNorm'] - outputs['unet.GroupNorm'])))
  print(f'largest output difference: {difference:.2e}')


if __name__ == '__main__':
  main()
