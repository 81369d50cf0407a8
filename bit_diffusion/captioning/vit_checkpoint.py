"""Initialising the captioner's ViT encoder from a pretrained big_vision / AugReg `.npz` file.

The two public layouts (flat `np.savez` archives of '/'-joined parameter paths):

  big_vision (`params/` prefix)        AugReg / vision_transformer (no prefix)
  embedding/{kernel,bias}              embedding/{kernel,bias}
  pos_embedding                        Transformer/posembed_input/pos_embedding (class token first)
  Transformer/encoderblock_i/          Transformer/encoderblock_i/
    LayerNorm_0, LayerNorm_1             LayerNorm_0, LayerNorm_2
    MultiHeadDotProductAttention_0       MultiHeadDotProductAttention_1
    MlpBlock_0/Dense_{0,1}               MlpBlock_3/Dense_{0,1}
  Transformer/encoder_norm             Transformer/encoder_norm

A class token (`cls`) is dropped with its position; a position grid of another size is resized
bilinearly (fine-tuning at another resolution, as big_vision does). Heads and the stacked
("scan") big_vision layout are not read. Widths, heads and depth must match the config.
"""

import re

import jax
import numpy as np
from flax import nnx

_BLOCK_NAMES = {  # Our module -> (big_vision name, AugReg name).
    'LayerNorm_0': ('LayerNorm_0', 'LayerNorm_0'),
    'MultiHeadDotProductAttention': ('MultiHeadDotProductAttention_0',
                                     'MultiHeadDotProductAttention_1'),
    'LayerNorm_1': ('LayerNorm_1', 'LayerNorm_2'),
    'MlpBlock': ('MlpBlock_0', 'MlpBlock_3'),
}


def _resize_positions(positions: np.ndarray, num_patches: int) -> np.ndarray:
  """[1, n, D] -> [1, num_patches, D], bilinear on the square grid."""
  old, new = int(round(positions.shape[1] ** 0.5)), int(round(num_patches ** 0.5))
  grid = positions.reshape(old, old, -1)
  grid = jax.image.resize(grid, (new, new, grid.shape[-1]), 'bilinear')
  return np.asarray(grid).reshape(1, num_patches, -1)


def read_encoder_weights(path: str) -> dict:
  """The ViT weights of an `.npz` file as the nested dict of our `ViT` (blocks keyed 0..)."""
  with np.load(path) as archive:
    weights = dict(archive)
  prefix = next((p for p in ('params/img/', 'params/', 'opt/target/', '')
                 if p + 'embedding/kernel' in weights), None)
  if prefix is None:
    raise ValueError(f'{path} is no ViT checkpoint: it has no embedding/kernel '
                     f'(keys: {sorted(weights)[:8]}...).')
  weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
  layout = 1 if 'Transformer/posembed_input/pos_embedding' in weights else 0
  positions = weights['Transformer/posembed_input/pos_embedding' if layout else 'pos_embedding']
  if 'cls' in weights:
    positions = positions[:, 1:]
  blocks = sorted({int(m.group(1)) for k in weights
                   if (m := re.match(r'Transformer/encoderblock_(\d+)/', k))})
  if not blocks:
    raise ValueError(f'{path} has no Transformer/encoderblock_<i> entries (a stacked "scan" '
                     'checkpoint is not supported).')

  def tree(prefix_path: str) -> dict:
    out = {}
    for key, value in weights.items():
      if key.startswith(prefix_path + '/'):
        node = out
        parts = key[len(prefix_path) + 1:].split('/')
        for part in parts[:-1]:
          node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out

  encoder = {'embedding': tree('embedding'), 'pos_embedding': positions,
             'encoder_norm': tree('Transformer/encoder_norm'), 'blocks': {}}
  for i in blocks:
    block = tree(f'Transformer/encoderblock_{i}')
    encoder['blocks'][i] = {ours: block[names[layout]] for ours, names in _BLOCK_NAMES.items()}
  return encoder


def load_into(params: nnx.State, path: str) -> nnx.State:
  """`params` (the captioner's) with params['encoder'] replaced by the weights in `path`."""
  pure = nnx.to_pure_dict(params)
  ours = pure['encoder']
  theirs = read_encoder_weights(path)
  if len(theirs['blocks']) != len(ours['blocks']):
    raise ValueError(f'{path} has {len(theirs["blocks"])} encoder blocks but '
                     f'model.encoder_depth={len(ours["blocks"])}; set it to match.')
  num_patches = ours['pos_embedding'].shape[1]
  if theirs['pos_embedding'].shape[1] != num_patches:
    theirs['pos_embedding'] = _resize_positions(theirs['pos_embedding'], num_patches)

  def copy(mine, loaded, where):
    if isinstance(mine, dict):
      return {k: copy(v, loaded[k] if k in loaded else _missing(where, k), f'{where}/{k}')
              for k, v in mine.items()}
    loaded = np.asarray(loaded, np.float32)
    if loaded.shape != mine.shape:
      raise ValueError(f'{path}: {where} has shape {loaded.shape}, the model {mine.shape}; '
                       'match model.encoder_width, encoder_heads, encoder_mlp_dim, patch_size.')
    return loaded

  pure['encoder'] = copy(ours, theirs, 'encoder')
  nnx.replace_by_pure_dict(params, pure)
  return params


def _missing(where: str, key: str):
  raise ValueError(f'The ViT checkpoint lacks {where}/{key}.')
