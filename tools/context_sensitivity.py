"""Does a sequence denoiser read its context? Sensitivity of one position's x0 estimate to the
noisy input at every other position.

    python tools/context_sensitivity.py --config=configs/text.py --workdir=runs/text

For `--num` held-out windows noised at time t (cosine gamma; all positions at the same level, as
in training), the gradient of position p's x0 estimate (summed over its bits) with respect to
the input bits at each position q; prints the mean norm per offset q - p and the ratio of the
adjacent positions (q = p +- 1) to the far ones (|q - p| >= 8). A denoiser that does not use its
context has a ratio near 1 (docs/reference.md, "Text": 0.95 with learned positions at std 0.02,
20.7 with rotary positions, both after 400 steps). Online weights (`--ema` for the EMA).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from bit_diffusion import diffusion
from bit_diffusion import generation
from bit_diffusion.methods import bit_diffusion

flags.DEFINE_string('workdir', None, 'The run to read.', required=True)
flags.DEFINE_float('t', 0.5, 'Diffusion time of the noise.')
flags.DEFINE_integer('num', 64, 'Held-out windows.')
flags.DEFINE_bool('ema', False, 'Read the EMA weights instead of the online ones.')
config_flags.DEFINE_config_file('config', None, 'A text config (an unconditional denoiser).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  model = generation.load(FLAGS.config, FLAGS.workdir, use_ema=FLAGS.ema)
  method = model.method
  windows = model.task.windows(FLAGS.config.data.get('eval_split', 'test'))[:FLAGS.num]
  bits = method.encode(jnp.asarray(windows))  # [N, L, k]
  length = bits.shape[1]
  position = length // 2
  gamma = method.diffusion.gamma_fn(jnp.full((len(bits),), FLAGS.t))
  x_t = diffusion.corrupt(bits, gamma, jax.random.normal(jax.random.key(0), bits.shape))
  denoise = bit_diffusion.make_denoise_fn(model.graphdef, model.params)
  estimate_at = lambda x: denoise(x, gamma, jnp.zeros_like(x), None, None)[:, position].sum()
  grads = jax.jit(jax.grad(estimate_at))(x_t)  # [N, L, k]
  sensitivity = np.asarray(jnp.linalg.norm(grads, axis=-1).mean(0))  # [L]
  offsets = np.arange(length) - position
  for offset in range(-4, 5):
    print(f'offset {offset:+d}: {sensitivity[offsets == offset][0]:.4f}')
  far = sensitivity[np.abs(offsets) >= 8].mean()
  adjacent = sensitivity[np.abs(offsets) == 1].mean()
  print(f'step {model.step}, t={FLAGS.t}: adjacent / far = {adjacent / far:.2f}')


if __name__ == '__main__':
  sys.exit(app.run(main))
