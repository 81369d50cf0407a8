"""The captioning networks: forward shapes, causality, and loading a pretrained ViT .npz."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bit_diffusion import param_keys
from bit_diffusion.captioning import model
from bit_diffusion.captioning import vit_checkpoint
from tests import jitted

SIZES = dict(max_length=10, image_size=16, patch_size=8, encoder_width=32, encoder_depth=2,
             encoder_mlp_dim=64, encoder_heads=2, width=24, depth=2, mlp_dim=48, num_heads=2)


def test_diffusion_captioner_shapes():
  net = model.DiffusionCaptioner(in_channels=14, out_channels=7, **SIZES, rngs=nnx.Rngs(0))
  x = jnp.ones((3, 10, 14))  # Noisy bits ++ self-conditioning: [B, L, 2k].
  images = jnp.zeros((3, 16, 16, 3), jnp.int32)
  out = jitted.module_call(net, x, jnp.full((3,), 0.5), images)
  assert out.shape == (3, 10, 7)
  tokens = nnx.eval_shape(lambda n: n.encode_condition(images), net)
  assert tokens.shape == (3, 4, 32)  # (16/8)^2 image tokens.


def test_diffusion_decoder_is_non_causal_and_ar_decoder_is_causal():
  net = model.DiffusionCaptioner(in_channels=6, out_channels=3, **SIZES, rngs=nnx.Rngs(0))
  net.bits_out.kernel[...] = jax.random.normal(jax.random.PRNGKey(1), (24, 3))
  images = jnp.zeros((1, 16, 16, 3), jnp.int32)
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 10, 6))
  changed = x.at[0, -1].add(1.0)  # Change the last position only.
  run = nnx.jit(lambda n, xs: n(xs, jnp.ones((2,)) * 0.3, jnp.concatenate([images] * 2)))
  out = run(net, jnp.concatenate([x, changed]))
  assert not np.allclose(out[0, 0], out[1, 0])  # Position 0 sees the future.

  ar = model.AutoregressiveCaptioner(vocab_size=50, **SIZES, rngs=nnx.Rngs(0))
  tokens = jnp.arange(10)[None] % 50
  run_ar = nnx.jit(lambda n, t: n(t, jnp.concatenate([images] * 2)))
  logits, later = run_ar(ar, jnp.concatenate([tokens, tokens.at[0, 6].set(7)]))[:, None]
  assert logits.shape == (1, 10, 50)
  np.testing.assert_allclose(logits[0, :6], later[0, :6], atol=1e-5)  # Positions < 6 unchanged.
  assert not np.allclose(logits[0, 6], later[0, 6])


def _vit_npz(path, net, layout):
  """Writes `net.encoder`'s weights as a big_vision or AugReg .npz with different values."""
  pure = nnx.to_pure_dict(nnx.state(net.encoder, nnx.Param))
  rng = np.random.default_rng(0)
  new = lambda a: rng.normal(size=np.shape(a)).astype(np.float32)
  flat, expected = {}, {}
  names = vit_checkpoint._BLOCK_NAMES
  for i, block in pure['blocks'].items():
    for ours, theirs in names.items():
      for path_parts, value in jax.tree_util.tree_flatten_with_path(block[ours])[0]:
        sub = '/'.join(str(p.key) for p in path_parts)
        value = new(value)
        flat[f'Transformer/encoderblock_{i}/{theirs[layout]}/{sub}'] = value
        expected[f'blocks/{i}/{ours}/{sub}'] = value
  for name in ('kernel', 'bias'):
    flat[f'embedding/{name}'] = expected[f'embedding/{name}'] = new(pure['embedding'][name])
    norm = new(pure['encoder_norm']['scale' if name == 'kernel' else 'bias'])
    key = 'scale' if name == 'kernel' else 'bias'
    flat[f'Transformer/encoder_norm/{key}'] = expected[f'encoder_norm/{key}'] = norm
  positions = new(pure['pos_embedding'])
  expected['pos_embedding'] = positions
  if layout:  # AugReg: a class token and its position first.
    width = positions.shape[-1]
    flat['cls'] = new(np.zeros((1, 1, width)))
    flat['Transformer/posembed_input/pos_embedding'] = np.concatenate(
        [new(np.zeros((1, 1, width))), positions], axis=1)
    flat['head/kernel'] = new(np.zeros((width, 10)))
  else:
    flat = {'params/' + k: v for k, v in flat.items()}
    flat['params/pos_embedding'] = positions
  np.savez(path, **flat)
  return expected


@pytest.mark.parametrize('layout', [0, 1], ids=['big_vision', 'augreg'])
def test_load_pretrained_vit(tmp_path, layout):
  net = model.DiffusionCaptioner(in_channels=14, out_channels=7, **SIZES, rngs=nnx.Rngs(0))
  path = str(tmp_path / 'vit.npz')
  expected = _vit_npz(path, net, layout)
  params = nnx.state(net, nnx.Param)
  decoder_before = np.asarray(params['decoder']['pos_embedding'][...])
  loaded = nnx.to_pure_dict(vit_checkpoint.load_into(params, path))
  for key, value in expected.items():
    node = loaded['encoder']
    for part in key.split('/'):
      node = node[int(part)] if part.isdigit() else node[part]
    np.testing.assert_array_equal(node, value, err_msg=key)
  np.testing.assert_array_equal(loaded['decoder']['pos_embedding'], decoder_before)

  wider = model.DiffusionCaptioner(in_channels=14, out_channels=7,
                                   **{**SIZES, 'encoder_width': 16}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='encoder_width'):
    vit_checkpoint.load_into(nnx.state(wider, nnx.Param), path)


def test_paper_config_sizes():
  """configs/coco_captioning.py: a ViT-B/16 encoder (86M at 384x384) and the 6 x 512 decoder."""
  from configs import coco_captioning
  config = coco_captioning.get_config()
  net = nnx.eval_shape(lambda: model.DiffusionCaptioner(  # Shapes only: nothing allocated.
      in_channels=30, out_channels=15, **model.model_kwargs(config),
      rngs=param_keys.ParamKeys(0)))
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  params = nnx.state(net, nnx.Param)
  assert 85.5e6 < count(params['encoder']) < 86.5e6
  assert len(net.decoder.blocks) == 6 and net.decoder.pos_embedding.shape == (1, 64, 512)
  assert net.bits_in.kernel.shape == (30, 512) and net.bits_out.kernel.shape == (512, 15)
