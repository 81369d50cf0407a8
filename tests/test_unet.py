"""Tests of the U-Net: shapes, paper parameter counts, conditioning, dropout, dtype, errors, grads.

Behavioural tests use one tiny model (8x8 images, 16 base channels, two stages) whose parameters
are all perturbed away from their initial values: the zero-initialised convs would otherwise make
the output identically zero and hide what the tests look for.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bit_diffusion import unet as unet_lib
from bit_diffusion.unet import UNet
from bit_diffusion.unet import count_params

TINY = dict(in_channels=6, out_channels=4, image_size=8, base_channels=16,
            channel_multipliers=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=2,
            dropout=0.3, num_classes=3)
BATCH = 2


def _init(seed=0, perturb=True, **kwargs):
  """(graphdef, params) of UNet(**TINY, **kwargs); params built under jit (eager: ~6 s).

  With `perturb`, every parameter gets 0.1 * N(0, 1) added (no zero-initialised layer is left).
  """
  config = {**TINY, **kwargs}
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: UNet(**config, rngs=nnx.Rngs(seed))), nnx.Param)

  @jax.jit
  def params():
    state = nnx.state(UNet(**config, rngs=nnx.Rngs(seed)), nnx.Param)
    if not perturb:
      return state
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [p + 0.1 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, leaves)

  return graphdef, params()


def _apply_fn(graphdef):
  """A jitted pure forward: (params, x, gamma, labels, key) -> [b, h, w, out] float32."""

  @jax.jit
  def apply(params, x, gamma, labels=None, key=None):
    return nnx.merge(graphdef, params)(x, gamma, labels, dropout_rng=key)

  return apply


@pytest.fixture(scope='module')
def tiny():
  """(graphdef, params, apply, x, gamma) for the tiny conditional model."""
  graphdef, params = _init()
  x = jax.random.normal(jax.random.key(1), (BATCH, 8, 8, TINY['in_channels']))
  gamma = jnp.array([0.2, 0.9])
  return graphdef, params, _apply_fn(graphdef), x, gamma


def _abstract_count(**kwargs) -> int:
  return count_params(nnx.eval_shape(lambda: UNet(**kwargs, rngs=nnx.Rngs(0))))


def test_output_shape_and_dtype(tiny):
  _, params, apply, x, gamma = tiny
  out = apply(params, x, gamma, jnp.array([0, 2]))
  assert out.shape == (BATCH, 8, 8, TINY['out_channels'])
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  assert float(jnp.std(out)) > 1e-3  # The perturbed model's output is not constant.


def test_fresh_model_outputs_zero():
  """The output conv is zero-initialised (authors' init), so a fresh model predicts zeros."""
  graphdef, params = _init(perturb=False)
  x = jnp.ones((1, 8, 8, TINY['in_channels']))
  np.testing.assert_array_equal(_apply_fn(graphdef)(params, x, jnp.array([0.5])), 0.0)


def test_cifar10_parameter_count():
  """Paper: about 51M. All stages have 256 channels, so the count has a closed form."""
  c, e = 256, 1024  # Channels and embedding width.
  conv3 = lambda cin, cout: 9 * cin * cout + cout
  norm = lambda ch: 2 * ch
  res = lambda cin: (norm(cin) + conv3(cin, c) + e * 2 * c + 2 * c + norm(c) + conv3(c, c)
                     + (cin * c + c if cin != c else 0))
  attn = norm(c) + 4 * c * c + 4 * c
  expected = (
      c * e + e + e * e + e  # Noise-embedding MLP.
      + conv3(48, c) + norm(c)  # conv_in and its GroupNorm.
      + 9 * res(c) + 12 * res(2 * c)  # 3 stages x 3 blocks down, x 4 blocks up (concat skips).
      + 14 * attn  # At 16x16 and 8x8: 2 stages x (3 down + 4 up).
      + 4 * conv3(c, c)  # 2 downsampling and 2 upsampling convs.
      + norm(c) + conv3(c, 24))  # Output.
  config = dict(in_channels=48, out_channels=24, image_size=32, base_channels=256,
                channel_multipliers=(1, 1, 1), num_res_blocks=3, attention_resolutions=(16, 8))
  unconditional = _abstract_count(**config)
  conditional = _abstract_count(**config, num_classes=10)
  assert unconditional == expected == 52_017_432
  assert conditional - unconditional == 11 * e  # 10 classes plus the null label.
  assert abs(unconditional / 51e6 - 1) < 0.05


def test_imagenet64_parameter_count():
  """Paper: about 240M (width 192, multipliers 1, 2, 3, 4; attention at 16 and 8 as the authors)."""
  n = _abstract_count(in_channels=48, out_channels=24, image_size=64, base_channels=192,
                      channel_multipliers=(1, 2, 3, 4), num_res_blocks=3,
                      attention_resolutions=(16, 8), num_heads=4, num_classes=1000)
  assert n == 247_190_232
  assert abs(n / 240e6 - 1) < 0.05


def test_configs_build_paper_sized_models():
  """The shipped configs' model fields give the paper's sizes."""
  from configs import cifar10
  from configs import imagenet64
  for module, paper, image_size, num_classes in [(cifar10, 51e6, 32, 0),
                                                 (imagenet64, 240e6, 64, 1000)]:
    config = module.get_config()
    n = _abstract_count(in_channels=48, out_channels=24, image_size=image_size,
                        num_classes=num_classes, **config.model)
    assert abs(n / paper - 1) < 0.05, (module.__name__, n)


def test_labels_condition_the_output(tiny):
  _, params, apply, x, gamma = tiny
  null = TINY['num_classes']
  out_a = apply(params, x, gamma, jnp.array([0, 1]))
  out_b = apply(params, x, gamma, jnp.array([2, 1]))
  assert float(jnp.max(jnp.abs(out_a[0] - out_b[0]))) > 1e-4  # Label 0 vs 2 differ.
  np.testing.assert_allclose(out_a[1], out_b[1], rtol=1e-5, atol=1e-5)  # Same label, same output.
  out_null = apply(params, x, gamma, jnp.array([null, null]))
  out_none = apply(params, x, gamma, None)
  np.testing.assert_allclose(out_null, out_none, rtol=1e-6, atol=1e-6)


def test_gamma_conditions_the_output(tiny):
  _, params, apply, x, gamma = tiny
  labels = jnp.array([0, 2])
  out = apply(params, x, gamma, labels)
  out_other = apply(params, x, 1.0 - gamma, labels)
  assert float(jnp.max(jnp.abs(out - out_other))) > 1e-4


def test_dropout_only_with_a_key(tiny):
  _, params, apply, x, gamma = tiny
  labels = jnp.array([0, 2])
  det = apply(params, x, gamma, labels)
  np.testing.assert_array_equal(det, apply(params, x, gamma, labels))
  key1, key2 = jax.random.key(10), jax.random.key(11)
  drop1 = apply(params, x, gamma, labels, key1)
  np.testing.assert_array_equal(drop1, apply(params, x, gamma, labels, key1))
  assert float(jnp.max(jnp.abs(drop1 - det))) > 1e-4
  assert float(jnp.max(jnp.abs(drop1 - apply(params, x, gamma, labels, key2)))) > 1e-4


def test_bfloat16_compute_returns_float32(tiny):
  graphdef, params, apply, x, gamma = tiny
  bf16_graphdef, bf16_params = _init(dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_params))  # Params stay f32.
  labels = jnp.array([0, 2])
  out = _apply_fn(bf16_graphdef)(params, x, gamma, labels)
  assert out.shape == (BATCH, 8, 8, TINY['out_channels'])
  assert out.dtype == jnp.float32
  reference = apply(params, x, gamma, labels)
  # bfloat16 has an 8-bit mantissa: agree to a few percent of the output scale.
  assert float(jnp.max(jnp.abs(out - reference))) < 0.05 * float(jnp.max(jnp.abs(reference)))


def test_gradient_reaches_every_parameter(tiny):
  """No dead parameters; done as the training code does it (merge inside jit + grad, dropout)."""
  graphdef, params, _, x, gamma = tiny

  @jax.jit
  def grads(params, key):
    def loss(params):
      model = nnx.merge(graphdef, params)
      return jnp.mean(model(x, gamma, jnp.array([0, 2]), dropout_rng=key) ** 2)
    return jax.grad(loss)(params)

  flat = jax.tree_util.tree_flatten_with_path(grads(params, jax.random.key(3)))[0]
  dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
  assert all(np.all(np.isfinite(g)) for _, g in flat)
  assert not dead, dead


def test_sinusoidal_embedding_matches_the_authors_formula():
  # dim 4: rates 10000 ** (-2 * (i // 2) / 4) = (1, 1, 0.01, 0.01); sin of even i, cos of odd i.
  emb = unet_lib.sinusoidal_embedding(jnp.array([1.0, 0.0]), 4)
  expected = [[math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)], [0, 0, 1, 1]]
  np.testing.assert_allclose(emb, expected, rtol=1e-6, atol=1e-7)


def test_num_groups():
  assert [unet_lib.num_groups(c) for c in (256, 192, 576, 48, 16, 6, 2)] == [
      32, 32, 32, 12, 4, 1, 1]


@pytest.mark.parametrize('changes, match', [
    (dict(image_size=6, channel_multipliers=(1, 1, 1)),
     r'image_size=6 is not divisible by .* = 4'),
    (dict(attention_resolutions=(4, 2)), r'attention_resolutions \[2\] never occur.*\[8, 4\]'),
    (dict(num_heads=3), r'num_heads=3 does not divide the 32 channels .* resolution 4'),
])
def test_constructor_errors(changes, match):
  with pytest.raises(ValueError, match=match):
    UNet(**{**TINY, **changes}, rngs=nnx.Rngs(0))


def test_labels_without_classes_raise():
  model = nnx.eval_shape(lambda: UNet(**{**TINY, 'num_classes': 0}, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match='num_classes=0'):
    model(jnp.zeros((1, 8, 8, 6)), jnp.ones((1,)), jnp.zeros((1,), jnp.int32))


def test_group_norm_equals_flax_group_norm_then_film():
  """unet.GroupNorm = nnx.GroupNorm (same parameters) followed by the FiLM, to float32 rounding."""
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  x = 3.0 * jax.random.normal(keys[0], (4, 8, 8, 64)) + 1.0
  ours = unet_lib.GroupNorm(64, 16, 1e-5, jnp.float32, nnx.Rngs(0))
  reference = nnx.GroupNorm(64, num_groups=16, epsilon=1e-5, rngs=nnx.Rngs(0))
  assert (jax.tree.map(jnp.shape, nnx.state(ours, nnx.Param)) ==
          jax.tree.map(jnp.shape, nnx.state(reference, nnx.Param)))
  for module in (ours, reference):
    module.scale[...] = jax.random.normal(keys[1], (64,))
    module.bias[...] = jax.random.normal(keys[2], (64,))
  np.testing.assert_allclose(ours(x), reference(x), atol=1e-5)
  film_scale, film_shift = (jax.random.normal(k, (4, 64)) for k in keys[3:])
  expected = reference(x) * (1.0 + film_scale[:, None, None]) + film_shift[:, None, None]
  np.testing.assert_allclose(ours(x, film_scale, film_shift), expected, atol=1e-5)


def test_pointwise_equals_the_1x1_conv():
  conv = nnx.Conv(24, 16, (1, 1), rngs=nnx.Rngs(0))
  conv.bias[...] = jax.random.normal(jax.random.PRNGKey(1), (16,))
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 24))
  np.testing.assert_allclose(unet_lib._pointwise(conv, x), conv(x), atol=1e-5)
