"""Tests of the U-Net: shapes, paper parameter counts, attention heads, the output conv,
conditioning, dropout, dtype, errors, grads.

Behavioural tests use one tiny model (8x8 images, 16 base channels, two stages, attention at 32
channels as 2 heads of 16) whose parameters are all perturbed away from their initial values: the
zero-initialised convs would otherwise make the output identically zero and hide what the tests
look for.
"""

import functools
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bit_diffusion import param_keys
from bit_diffusion import unet as unet_lib
from bit_diffusion.unet import UNet
from bit_diffusion.unet import count_params

TINY = dict(in_channels=6, out_channels=4, image_size=8, base_channels=16,
            channel_multipliers=(1, 2), num_res_blocks=1, attention_resolutions=(4,), head_dim=16,
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
    # One normal draw cut into the leaves: a draw per leaf compiles ~100 generators (6 s).
    leaves, treedef = jax.tree.flatten(state)
    noise = jax.random.normal(jax.random.key(seed + 1), (sum(p.size for p in leaves),))
    offsets = np.cumsum([0] + [p.size for p in leaves])
    leaves = [p + 0.1 * noise[start:stop].reshape(p.shape).astype(p.dtype)
              for p, start, stop in zip(leaves, offsets[:-1], offsets[1:])]
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


@functools.cache
def _abstract_model_of(items: tuple[tuple[str, Any], ...]) -> UNet:
  return nnx.eval_shape(lambda: UNet(**dict(items), rngs=param_keys.ParamKeys(0)))


def _abstract_model(**kwargs) -> UNet:
  """UNet(**kwargs) as shapes only, built once per set of arguments, defaults filled in (the
  paper-sized models take 1-3 s each to trace; the tests below only read them)."""
  arguments = inspect.signature(UNet.__init__).bind(None, **kwargs, rngs=None)
  arguments.apply_defaults()
  for name in ('self', 'rngs'):
    del arguments.arguments[name]
  return _abstract_model_of(tuple(sorted((name, tuple(value) if isinstance(value, list) else value)
                                         for name, value in arguments.arguments.items())))


def _abstract_count(**kwargs) -> int:
  return count_params(_abstract_model(**kwargs))


def test_output_shape_and_dtype(tiny):
  _, params, apply, x, gamma = tiny
  out = apply(params, x, gamma, jnp.array([0, 2]))
  assert out.shape == (BATCH, 8, 8, TINY['out_channels'])
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  assert float(jnp.std(out)) > 1e-3  # The perturbed model's output is not constant.


@pytest.mark.parametrize('out_kernel_size', [3, 1])
def test_fresh_model_outputs_zero(out_kernel_size):
  """The output conv is zero-initialised (authors' init), so a fresh model predicts zeros."""
  graphdef, params = _init(perturb=False, out_kernel_size=out_kernel_size)
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


IMAGENET64 = dict(in_channels=48, out_channels=24, image_size=64, base_channels=192,
                  channel_multipliers=(1, 2, 3, 4), num_res_blocks=3,
                  attention_resolutions=(16, 8), num_classes=1000)


def test_imagenet64_parameter_count():
  """Paper: about 240M (width 192, multipliers 1, 2, 3, 4; attention at 16 and 8 as the authors)."""
  assert _abstract_count(**IMAGENET64) == 247_190_232


def test_configs_build_paper_sized_models():
  """The shipped configs' model fields build exactly the models counted above."""
  from configs import cifar10
  from configs import imagenet64
  for module, expected, image_size, num_classes in [(cifar10, 52_017_432, 32, 0),
                                                    (imagenet64, 247_190_232, 64, 1000)]:
    config = module.get_config()
    n = _abstract_count(in_channels=48, out_channels=24, image_size=image_size,
                        num_classes=num_classes, **config.model)
    assert n == expected, (module.__name__, n)


def _attention_layers(model):
  """[(channels, SelfAttention)] of every block with attention, down path then up path."""
  blocks = list(model.down) + list(model.up)
  return [(block.attn.norm.scale.shape[0], block.attn) for block in blocks
          if block.attn is not None]


@pytest.mark.parametrize('head_dim', [64, 32])
def test_heads_per_layer_come_from_head_dim(head_dim):
  """channels // head_dim heads of width head_dim at 64, 128 and 256 channels (pix2seq)."""
  model = nnx.eval_shape(lambda: UNet(
      in_channels=6, out_channels=3, image_size=16, base_channels=64,
      channel_multipliers=(1, 2, 4), num_res_blocks=1, attention_resolutions=(16, 8, 4),
      head_dim=head_dim, rngs=param_keys.ParamKeys(0)))
  layers = _attention_layers(model)
  assert sorted({c for c, _ in layers}) == [64, 128, 256]
  for channels, attn in layers:
    assert (attn.num_heads, attn.head_dim) == (channels // head_dim, head_dim), channels
    assert attn.qkv.kernel.shape == (channels, 3 * channels)
    assert attn.proj.kernel.shape == (channels, channels)


def test_imagenet64_heads():
  """576 and 768 channels at 16x16 and 8x8: 9 and 12 heads of 64 (4 heads before head_dim)."""
  model = _abstract_model(**IMAGENET64)
  assert {c: a.num_heads for c, a in _attention_layers(model)} == {576: 9, 768: 12}


def _reference_attention(attn, x, num_heads, head_dim):
  """The attention block in numpy from its parameters, with num_heads heads of head_dim."""
  b, h, w, c = x.shape
  normed = np.asarray(attn.norm(x), np.float64).reshape(b, h * w, c)
  qkv = normed @ np.asarray(attn.qkv.kernel[...]) + np.asarray(attn.qkv.bias[...])
  q, k, v = np.moveaxis(qkv.reshape(b, h * w, 3, num_heads, head_dim), 2, 0)  # [b, hw, n, d]
  logits = np.einsum('bqnd,bknd->bnqk', q, k) / np.sqrt(head_dim)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  y = np.einsum('bnqk,bknd->bqnd', weights, v).reshape(b, h * w, num_heads * head_dim)
  y = y @ np.asarray(attn.proj.kernel[...]) + np.asarray(attn.proj.bias[...])
  return (np.asarray(x, np.float64) + y.reshape(b, h, w, c)) / np.sqrt(2)


def test_attention_is_per_head():
  """128 channels with head_dim 64: two independent softmaxes, not one over 128 channels."""
  attn = unet_lib.SelfAttention(128, 64, jnp.float32, nnx.Rngs(0))
  keys = jax.random.split(jax.random.key(0), 3)
  attn.qkv.bias[...] = 0.3 * jax.random.normal(keys[0], (3 * 128,))
  attn.qkv.kernel[...] = 3.0 * attn.qkv.kernel[...]  # Peaked softmaxes, so head count matters.
  x = jax.random.normal(keys[1], (2, 4, 4, 128))
  out = np.asarray(attn(x))
  np.testing.assert_allclose(out, _reference_attention(attn, x, 2, 64), atol=2e-5)
  one_head = _reference_attention(attn, x, 1, 128)
  assert np.max(np.abs(out - one_head)) > 1e-2  # The test tells 2 heads from 1.


def test_attention_width_when_head_dim_does_not_divide_the_channels():
  """As Keras' MultiHeadAttention in pix2seq: 96 channels -> 1 head of 64, projected back to 96."""
  attn = unet_lib.SelfAttention(96, 64, jnp.float32, nnx.Rngs(0))
  assert attn.num_heads == 1
  assert attn.qkv.kernel.shape == (96, 3 * 64)
  assert attn.proj.kernel.shape == (64, 96)
  x = jax.random.normal(jax.random.key(0), (1, 2, 2, 96))
  np.testing.assert_allclose(attn(x), _reference_attention(attn, x, 1, 64), atol=2e-5)


def test_softmax_output_conv_is_1x1():
  """out_kernel_size=1 (softmax logits, as pix2seq) makes conv_out 1x1: 8 * c * out fewer params."""
  models = {k: nnx.eval_shape(lambda k=k: UNet(**TINY, out_kernel_size=k,
                                                    rngs=param_keys.ParamKeys(0)))
            for k in (1, 3)}
  c, out = TINY['base_channels'], TINY['out_channels']
  assert models[1].conv_out.kernel.shape == (1, 1, c, out)
  assert models[3].conv_out.kernel.shape == (3, 3, c, out)
  assert count_params(models[3]) - count_params(models[1]) == 8 * c * out


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
    (dict(head_dim=64), r'head_dim=64 exceeds the 32 channels .* resolution 4.* at most 32'),
    (dict(head_dim=0), r'head_dim=0'),
    (dict(out_kernel_size=0), r'out_kernel_size=0'),
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
