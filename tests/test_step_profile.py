"""benchmarks/step_profile.py: the categories it gives XLA:CPU's operations (on a real compiled
program with a convolution, a matrix product, their gradients and a guarded update), the
profiler events it reads, and the comparison table."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))

import step_profile  # noqa: E402


def _loss(params, images):
  """A 3x3 convolution, then a dense layer: [b, 8, 8, 3] -> scalar."""
  hidden = jax.lax.conv_general_dilated(images, params['conv'], (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.mean(jnp.tanh(hidden.reshape(images.shape[0], -1) @ params['dense']) ** 2)


@jax.jit
def _step(params, images):
  """A gradient step guarded as engine.Engine's: the update inside a lax.cond."""
  loss, grads = jax.value_and_grad(_loss)(params, images)
  update = lambda p: jax.tree.map(lambda w, g: w - 0.1 * g * jnp.sqrt(w**2 + 1), p, grads)
  return jax.lax.cond(jnp.isfinite(loss), update, lambda p: p, params), loss


@pytest.fixture(scope='module')
def compiled():
  params = {'conv': jnp.ones((3, 3, 3, 4)) / 27, 'dense': jnp.ones((256, 5)) / 256}
  images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
  executable = _step.lower(params, images).compile()
  return executable, params, images


def test_categories_of_a_real_program(compiled):
  instructions = step_profile.parse_hlo(compiled[0].as_text())
  by_opcode = {}
  for name, info in instructions.items():
    by_opcode.setdefault(info['opcode'], []).append(name)
  computations = step_profile.by_computation(instructions)
  categories = {name: step_profile.categorize(name, instructions, computations)
                for name in instructions}
  convolutions = [categories[n] for n in by_opcode['convolution']]
  # One forward convolution and its weight gradient (no input gradient: the input is data).
  assert sorted(convolutions) == ['convolution', 'convolution, backward']
  dots = sorted(categories[n] for n in by_opcode['dot'])
  # The forward product and the dense weight's gradient; the hidden's gradient is the
  # convolution's input.
  assert dots[0] == 'matrix product' and set(dots[1:]) == {'matrix product, backward'}
  # A fusion that contains a convolution takes its category.
  for name in by_opcode.get('fusion', []):
    inner = {i['opcode'] for i in computations[instructions[name]['calls'][0]]}
    if 'convolution' in inner:
      assert categories[name].startswith('convolution')
  # The guarded update's executed instructions (in the cond's branch, not inside a fusion's
  # body) are the optimizer's.
  fusion_bodies = {c for n in by_opcode['fusion'] for c in instructions[n]['calls']}
  update = [n for n, info in instructions.items() if '/cond/' in info['op_name']
            and info['opcode'] not in ('parameter', 'constant', 'tuple', 'get-tuple-element')
            and info['computation'] not in fusion_bodies]
  assert update and {categories[n] for n in update} == {'optimizer update'}
  assert step_profile.categorize('no-such-instruction', instructions) == 'other'


def test_profile_events_name_the_program_s_instructions(compiled, tmp_path):
  executable, params, images = compiled
  executable(params, images)
  wall = step_profile._profiled(lambda: jax.block_until_ready(executable(params, images)),
                                str(tmp_path))
  text = executable.as_text()
  instructions = step_profile.parse_hlo(text)
  module = step_profile.module_name(text)
  events = [e for e in step_profile.thunk_events(str(tmp_path)) if e[0] == module]
  assert events and all(op in instructions for _, op, _ in events)
  summary = step_profile.summarize(events, module, instructions, 1, wall)
  shares = [c['share'] for c in summary['categories'].values()]
  assert sum(shares) == pytest.approx(1.0)
  assert summary['op_seconds_per_step'] == pytest.approx(sum(s for _, _, s in events))
  assert 'convolution' in summary['categories']


def test_compare_groups_categories_per_side():
  def side(**ms):
    categories = {k.replace('_', ' '): {'seconds_per_step': v / 1e3} for k, v in ms.items()}
    return {'categories': categories, 'op_seconds_per_step': sum(ms.values()) / 1e3,
            'wall_seconds_per_step': 0.25}
  ours = {'batch_size': 8, 'train': side(convolution=100, elementwise=60, reduction=40)}
  torch = {'eager': {'train': side(convolution=150, normalization=50)}}
  table = step_profile.compare(ours, torch).splitlines()
  assert table[0] == 'train step, batch 8: ms per step (share of the summed operations)'
  assert table[2] == '| | ours | PyTorch eager |'
  assert '| convolutions, forward | 100 (50%) | 150 (75%) |' in table
  assert '| normalization, elementwise, reductions | 100 (50%) | 50 (25%) |' in table
  assert '| sum of the operations | 200 | 200 |' in table
