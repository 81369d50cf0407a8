"""Infilling captions: caption tokens with some known, the others filled in, given the image.

`--mode=infill --infill_file=FILE.json` reads [{"index": i, "caption": "a red _ at the top"},
...]: `index` is the position of an image in the held-out source (`data.eval_split`), and each
MASK_CHAR ('_') in the caption stands for one unknown token; the known runs between them are
encoded with the model's tokenizer, then EOS and padding follow as in training (known too).
Bit Diffusion fills by replacement (`samplers.sample`), the autoregressive baseline from the left
context. `token_accuracy` scores it on held-out captions with one token removed from each.
"""

import json
import os

import jax
import numpy as np
from absl import logging

from bit_diffusion import checkpointing
from bit_diffusion import engine
from bit_diffusion import generation
from bit_diffusion import outputs
from bit_diffusion.captioning import tokens as tokens_lib

MASK_CHAR = '_'


def encode_known(caption: str, tokenizer: tokens_lib.CaptionTokenizer
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [L], known mask bool [L]) of a caption with MASK_CHAR per unknown token."""
  ids, mask = [], []
  for i, segment in enumerate(caption.strip().lower().split(MASK_CHAR)):
    if i:
      ids.append(tokens_lib.PAD_ID)
      mask.append(False)
    if segment.strip():
      pieces = tokenizer.processor.encode(segment.strip())
      ids += pieces
      mask += [True] * len(pieces)
  if len(ids) > tokenizer.max_length - 1:
    raise ValueError(f'{caption!r} comes to {len(ids)} tokens; the model\'s captions hold '
                     f'{tokenizer.max_length - 1} and an EOS.')
  padding = tokenizer.max_length - len(ids) - 1
  return (np.asarray(ids + [tokens_lib.EOS_ID] + [tokens_lib.PAD_ID] * padding, np.int32),
          np.asarray(mask + [True] * (padding + 1), bool))


def fill(model: generation.LoadedModel, images: np.ndarray, tokens: np.ndarray,
         mask: np.ndarray, rng: jax.Array, **overrides) -> np.ndarray:
  """int32 [N, L]: `tokens` with the positions where `mask` is False filled, given images."""
  batch_size = model.batch_size(model.method.config.sampling.batch_size)
  filled = generation.generate(model.make_sample_fn(infill=True, **overrides), model.params, rng,
                               (images.astype(np.int32), tokens, mask), batch_size)
  return np.where(mask, tokens, filled)


def infill_from_file(config, workdir: str, path: str) -> str:
  """Fills the captions of an infill file; writes WORKDIR/infill/<file name>_<step>.json
  ([{"index", "caption"}]) and returns its path."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Infill file {path!r} not found: a JSON list of {{"index": i, '
                            f'"caption": "with {MASK_CHAR} per unknown token"}}.')
  with open(path) as f:
    entries = json.load(f)
  if not isinstance(entries, list) or not all(
      isinstance(e, dict) and {'index', 'caption'} <= set(e) for e in entries):
    raise ValueError(f'{path} must be a JSON list of {{"index": int, "caption": str}}.')
  workdir = checkpointing.ensure_writable_dir(workdir)
  model = generation.load(config, workdir, config.sampling.use_ema)
  source, tokenizer = model.task.eval_source(), model.task.tokenizer
  indices = np.asarray([int(e['index']) for e in entries])
  if indices.min() < 0 or indices.max() >= len(source):
    raise ValueError(f'{path}: image indices must lie in [0, {len(source)}) (the held-out '
                     f'images); got {indices.min()}..{indices.max()}.')
  known = [encode_known(e['caption'], tokenizer) for e in entries]
  tokens, mask = np.stack([k[0] for k in known]), np.stack([k[1] for k in known])
  filled = fill(model, source.get(indices)['images'], tokens, mask,
                engine.seed_key(config.seed, 'infill'))
  captions = tokenizer.ids_to_text(filled)
  stem = os.path.join(workdir, 'infill', f'{os.path.splitext(os.path.basename(path))[0]}_'
                      f'{model.step}')
  if jax.process_index() == 0:
    stem = outputs.reserve(stem, ('.json',))
    with open(stem + '.json', 'w') as f:
      json.dump([{'index': int(i), 'caption': c} for i, c in zip(indices, captions)], f,
                indent=0)
    logging.info('Filled %d captions into %s.json', len(captions), stem)
  return stem + '.json'


def token_accuracy(config, model: generation.LoadedModel, num: int) -> float:
  """The share of removed tokens recovered: the first `num` held-out images, each with its first
  reference caption missing one token (a piece before EOS, at a seeded random place)."""
  source, tokenizer = model.task.eval_source(), model.task.tokenizer
  batch = source.get(np.arange(min(num, len(source))))
  tokens = tokenizer.text_to_ids([refs[0] for refs in batch['captions']])
  lengths = np.argmax(tokens == tokens_lib.EOS_ID, axis=1)  # Pieces before EOS.
  where = (np.random.default_rng(config.seed).random(len(tokens)) * lengths).astype(int)
  mask = np.ones(tokens.shape, bool)
  mask[np.arange(len(tokens)), where] = False
  filled = fill(model, batch['images'], tokens, mask, engine.seed_key(config.seed, 'infill'))
  return float((filled[~mask] == tokens[~mask]).mean())
