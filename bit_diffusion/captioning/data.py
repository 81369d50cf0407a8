"""Captioning data: image-caption sources and the resumable batch iterator over them.

A caption source gives random access to images with all their reference captions:

  get(indices) -> {'images': uint8 [n, S, S, 3], 'captions': n lists of strings,
                   'image_ids': int64 [n]}

Sources (`data.name`): 'shapes' (the embedded scenes, `scenes.py`), 'coco_json' (a COCO-format
captions file plus an image folder) and 'coco_captions' (TFDS, random access). COCO images are
made square by `resize_image` (`data.resize`): 'pad' (the default) keeps the whole image, its
longer side resized to S and padded at the bottom or right as in pix2seq; 'crop' keeps the
centre square. Training batches reuse `batches.BatchIterator` (order a pure function of
(seed, step), per-process slices, prefetching); each example's caption is drawn among its
references with rng(seed, 2, step), then tokenised.
"""

import collections
import json
import os

import numpy as np
from PIL import Image

from bit_diffusion import batches
from bit_diffusion.captioning import scenes
from bit_diffusion.captioning import tokens as tokens_lib

RESIZE_MODES = ('pad', 'crop')
# The padding of 'pad': pix2seq's background, 0.3 of [0, 1] (`pad_image_to_max_size` in its
# data/transforms.py), in uint8: int(0.3 * 255).
PAD_VALUE = 76


def _check_resize_mode(mode: str) -> None:
  if mode not in RESIZE_MODES:
    raise ValueError(f'Unknown caption image resize mode data.resize={mode!r}: use '
                     "'pad' (the whole image, padded) or 'crop' (centre crop).")


def resize_image(image: np.ndarray, size: int, mode: str) -> np.ndarray:
  """uint8 [H, W, 3 or 1] (or [H, W]) -> uint8 [size, size, 3], bicubic.

  'pad': the whole image: the longer side is resized to `size`, the image put at the top-left
    and padded with PAD_VALUE at the bottom (wide images) or right (tall ones), as pix2seq's
    eval preprocessing does (`resize_image` keeping the aspect ratio, then
    `pad_image_to_max_size`: "Padding gets added on bottom and right", background 0.3);
    a 2:1 image fills rows [0, size / 2).
  'crop': the shorter side is resized to `size` and the centre square kept; a 2:1 image loses
    its left and right quarters.
  A square image of side `size` is returned unchanged by both.
  """
  _check_resize_mode(mode)
  pil = Image.fromarray(np.asarray(image, np.uint8).squeeze()).convert('RGB')
  width, height = pil.size
  if (width, height) == (size, size):
    return np.asarray(pil, np.uint8)
  if mode == 'crop':
    scale = size / min(width, height)
    width, height = max(size, round(width * scale)), max(size, round(height * scale))
    pil = pil.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(pil.crop((left, top, left + size, top + size)), np.uint8)
  scale = size / max(width, height)
  width, height = min(size, max(1, round(width * scale))), min(size, max(1, round(height * scale)))
  if (width, height) != pil.size:
    pil = pil.resize((width, height), Image.Resampling.BICUBIC)
  padded = np.full((size, size, 3), PAD_VALUE, np.uint8)
  padded[:height, :width] = np.asarray(pil, np.uint8)
  return padded


class CocoJsonSource:
  """A COCO captions file (`images`: id, file_name; `annotations`: image_id, caption) + images.

  Images without captions are skipped; images are decoded and resized on demand
  (`resize_image`: 'pad' keeps the whole image, 'crop' its centre square).
  """

  def __init__(self, annotations_path: str, image_dir: str, image_size: int, resize: str = 'pad'):
    _check_resize_mode(resize)
    try:
      with open(annotations_path) as f:
        coco = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f'Cannot read the COCO captions file {annotations_path}: {e}') from e
    captions = collections.defaultdict(list)
    for annotation in coco.get('annotations', []):
      captions[annotation['image_id']].append(str(annotation['caption']))
    images = sorted((image['id'], image['file_name']) for image in coco.get('images', [])
                    if image['id'] in captions)
    if not images:
      raise ValueError(f'{annotations_path} has no image with a caption (it needs `images` with '
                       '`id` and `file_name`, and `annotations` with `image_id` and `caption`).')
    self.image_ids = np.array([i for i, _ in images], np.int64)
    self.captions = [captions[i] for i, _ in images]
    self.paths = [os.path.join(image_dir, name) for _, name in images]
    self.image_size = image_size
    self.resize = resize

  def __len__(self) -> int:
    return len(self.paths)

  def get(self, indices: np.ndarray) -> dict:
    images = []
    for i in np.asarray(indices):
      try:
        with Image.open(self.paths[i]) as image:
          images.append(resize_image(np.asarray(image.convert('RGB')), self.image_size,
                                     self.resize))
      except OSError as e:
        raise ValueError(f'Cannot decode image {self.paths[i]}: {e}') from e
    return {'images': np.stack(images), 'captions': [self.captions[i] for i in indices],
            'image_ids': self.image_ids[np.asarray(indices)]}

  def all_captions(self) -> list[str]:
    return [c for captions in self.captions for c in captions]


class TfdsCocoSource:
  """TFDS `coco_captions` (2014 images, Karpathy splits) read by random access, resized by
  `resize_image` ('pad' or 'crop')."""

  def __init__(self, split: str, image_size: int, data_dir: str = '', download: bool = True,
               resize: str = 'pad'):
    _check_resize_mode(resize)
    import tensorflow_datasets as tfds  # Slow to import; only this source needs it.
    try:
      self.data_source = tfds.data_source('coco_captions', split=split,
                                          data_dir=data_dir or None, download=download)
    except Exception as e:  # Missing data, no network, or tfrecord files without random access.
      raise ValueError(
          f'Cannot open TFDS coco_captions split {split!r} in data_dir {data_dir or "(default)"}: '
          f'{e}. Build it where there is network with `tfds build coco_captions '
          '--file_format=array_record --data_dir=DIR` and pass --config.data.data_dir=DIR, or use '
          "data.name='coco_json' with the COCO annotation files.") from e
    self.image_size = image_size
    self.resize = resize

  def __len__(self) -> int:
    return len(self.data_source)

  def get(self, indices: np.ndarray) -> dict:
    examples = [self.data_source[int(i)] for i in indices]
    text = lambda t: t.decode('utf-8') if isinstance(t, bytes) else str(t)
    return {'images': np.stack([resize_image(ex['image'], self.image_size, self.resize)
                                for ex in examples]),
            'captions': [[text(t) for t in ex['captions']['text']] for ex in examples],
            'image_ids': np.array([ex['image/id'] for ex in examples], np.int64)}

  def all_captions(self) -> list[str]:
    return [c for i in range(len(self)) for c in self.get([i])['captions'][0]]


def create_source(data_config, split: str):
  """The caption source of `data_config.name` for split 'train' or 'eval'.

  COCO images are resized by `data_config.resize` ('pad' | 'crop', see `resize_image`); the
  shapes scenes are drawn square at the size and do not read it.
  """
  name, size = data_config.name, data_config.image_size
  if name == 'shapes':
    return scenes.ShapesSource('train' if split == 'train' else 'test', size,
                               num_test=data_config.num_test)
  if name == 'coco_json':
    annotations = data_config.annotations if split == 'train' else data_config.eval_annotations
    image_dir = data_config.image_dir if split == 'train' else data_config.eval_image_dir
    if not annotations:
      raise ValueError(f"data.name='coco_json' needs data.annotations and data.eval_annotations "
                       f'(COCO captions files); the {split} one is empty.')
    return CocoJsonSource(annotations, image_dir, size, data_config.resize)
  if name == 'coco_captions':
    return TfdsCocoSource(data_config.train_split if split == 'train' else data_config.eval_split,
                          size, data_config.data_dir, data_config.download, data_config.resize)
  raise ValueError(f"Unknown captioning data.name {name!r}: use 'shapes', 'coco_json' or "
                   "'coco_captions'.")


def create_tokenizer(config) -> tokens_lib.CaptionTokenizer:
  """The tokenizer at `tokenizer.path`, or (path '') one trained now on the training captions."""
  if config.tokenizer.path:
    return tokens_lib.CaptionTokenizer.from_file(config.tokenizer.path,
                                                 config.tokenizer.max_length)
  captions = create_source(config.data, 'train').all_captions()
  model = tokens_lib.train_tokenizer(captions, config.tokenizer.vocab_size,
                                     config.tokenizer.model_type)
  return tokens_lib.CaptionTokenizer(model, config.tokenizer.max_length)


class CaptionBatchIterator(batches.BatchIterator):
  """BatchIterator over a caption source: {'images': int32 [b, S, S, 3], 'tokens': int32 [b, L]}.

  The example order and process slicing are BatchIterator's; one reference caption per example
  is drawn with rng(seed, 2, step) (one draw per global batch position).
  """

  def __init__(self, source, tokenizer: tokens_lib.CaptionTokenizer, **kwargs):
    super().__init__(source, random_flip=False, **kwargs)  # Flips would swap left and right.
    self.tokenizer = tokenizer

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    batch = self.source.get(self.indices_at(step))
    draws = np.random.default_rng([self.seed, 2, step]).random(self.global_batch_size)
    draws = draws[self.offset:self.offset + self.local_batch_size]
    chosen = [refs[int(u * len(refs))] for u, refs in zip(draws, batch['captions'])]
    return {'images': batch['images'].astype(np.int32),
            'tokens': self.tokenizer.text_to_ids(chosen)}
