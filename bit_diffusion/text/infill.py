"""Infilling text: windows with known tokens kept and the others filled in by a trained model.

Bit Diffusion fills by replacement (`samplers.sample`: the known analog bits re-noised to every
step's level); the autoregressive baseline decodes the unknown positions from their left
context only (`methods/autoregressive.py`); the unigram sampler draws them from the training
frequencies. Known parts come from a file (`read_known`):
- .txt: one window per line, each unknown token written as MASK_CHAR ('_'); the known runs
  between them are encoded with the model's vocabulary (text8: normalised), and every line
  must come to exactly L tokens;
- .npz: 'tokens' int [N, L] and 'mask' bool [N, L] (True: known), any vocabulary.
`span_accuracy` scores fills of held-out windows with a span of s tokens removed.
"""

import os

import jax
import numpy as np

from bit_diffusion import generation

MASK_CHAR = '_'


def read_known(path: str, vocabulary, length: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [N, L], known mask bool [N, L]) of an infill file; unknown tokens are 0."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Infill file {path!r} not found: a .txt (one window per line, '
                            f"unknown tokens as '{MASK_CHAR}') or a .npz ('tokens', 'mask').")
  if path.endswith('.npz'):
    with np.load(path) as data:
      if not {'tokens', 'mask'} <= set(data.files):
        raise ValueError(f"{path} must hold 'tokens' int [N, L] and 'mask' bool [N, L]; it has "
                         f'{data.files}.')
      tokens, mask = np.asarray(data['tokens']), np.asarray(data['mask'], bool)
    if tokens.ndim != 2 or tokens.shape[1] != length or mask.shape != tokens.shape:
      raise ValueError(f'{path}: tokens {tokens.shape} and mask {mask.shape} must both be '
                       f'[N, {length}] (the model\'s windows have {length} tokens).')
    known = tokens[mask]
    if known.size and (known.min() < 0 or known.max() >= vocabulary.size):
      raise ValueError(f'{path}: known tokens lie in [{known.min()}, {known.max()}], outside the '
                       f"model's vocabulary [0, {vocabulary.size}).")
    return np.where(mask, tokens, 0).astype(np.int32), mask
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  if not lines:
    raise ValueError(f'Infill file {path} has no lines.')
  tokens, masks = [], []
  for number, line in enumerate(lines, 1):
    ids, mask = [], []
    for i, segment in enumerate(line.split(MASK_CHAR)):
      if i:  # Each MASK_CHAR is one unknown token.
        ids.append(0)
        mask.append(False)
      if segment:
        encoded = vocabulary.encode(segment)
        ids += encoded.tolist()
        mask += [True] * len(encoded)
    if len(ids) != length:
      raise ValueError(f'{path} line {number} comes to {len(ids)} tokens (known and '
                       f"'{MASK_CHAR}'); the model's windows have {length}.")
    tokens.append(ids)
    masks.append(mask)
  return np.asarray(tokens, np.int32), np.asarray(masks, bool)


def fill(model: generation.LoadedModel, tokens: np.ndarray, mask: np.ndarray, rng: jax.Array,
         **overrides) -> np.ndarray:
  """int32 [N, L]: `tokens` with the positions where `mask` is False filled by the model."""
  batch_size = model.batch_size(model.method.config.sampling.batch_size)
  conditions = (np.zeros((len(tokens),), np.int32), tokens.astype(np.int32), mask)
  filled = generation.generate(model.make_sample_fn(infill=True, **overrides), model.params, rng,
                               conditions, batch_size)
  return np.where(mask, tokens, filled)


def unigram_fill(tokens: np.ndarray, mask: np.ndarray, train_tokens: np.ndarray,
                 vocab_size: int, seed: int) -> np.ndarray:
  """int32 [N, L]: the unknown positions drawn i.i.d. from the training unigram frequencies."""
  counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64)
  draws = np.random.default_rng(seed).choice(vocab_size, size=tokens.shape,
                                             p=counts / counts.sum())
  return np.where(mask, tokens, draws).astype(np.int32)


def span_masks(num: int, length: int, span: int, seed: int) -> np.ndarray:
  """bool [num, length]: all known but one span of `span` tokens per row, at a random start."""
  if not 0 < span < length:
    raise ValueError(f'An infill span must be in [1, {length - 1}]; got {span}.')
  starts = np.random.default_rng([seed, span]).integers(0, length - span + 1, size=num)
  positions = np.arange(length)[None, :]
  return ~((positions >= starts[:, None]) & (positions < starts[:, None] + span))


def span_accuracy(filled: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
  """The share of unknown positions (mask False) filled with the original token."""
  unknown = ~mask
  return float((filled[unknown] == original[unknown]).mean())
