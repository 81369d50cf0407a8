"""Captioning data: the embedded scenes, image resizing, the COCO-format loader, TFDS
coco_captions, batches."""

import json

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from bit_diffusion.captioning import data
from bit_diffusion.captioning import scenes
from bit_diffusion.captioning import tokens


def test_scenes_split_is_disjoint_and_captions_follow_the_image():
  train, test = scenes.ShapesSource('train', 32), scenes.ShapesSource('test', 32, num_test=500)
  assert len(train) + len(test) == len(scenes.all_scenes()) == 8235 and len(test) == 500
  assert not set(train.ids) & set(test.ids)
  batch = test.get(np.arange(3))
  assert batch['images'].shape == (3, 32, 32, 3) and batch['images'].dtype == np.uint8
  np.testing.assert_array_equal(batch['images'], test.get(np.arange(3))['images'])  # Pure.
  scene = test.scenes[0]
  assert batch['captions'][0] == [scenes.caption(scene, p) for p in range(3)]
  # The objects' colours are in the image, at their cells.
  for shape, colour, cell in scene:
    row, col = divmod(cell, 3)
    patch = batch['images'][0, row * 32 // 3:(row + 1) * 32 // 3, col * 32 // 3:(col + 1) * 32 // 3]
    assert (patch.reshape(-1, 3) == scenes.COLOURS[colour]).all(-1).any()


# Four distinct colours, for vertical stripes whose survival each resize mode is checked on.
STRIPES = np.array([(10, 200, 30), (220, 40, 90), (0, 0, 255), (250, 250, 0)], np.uint8)
PAD = (data.PAD_VALUE,) * 3


def _stripes(height: int, widths: tuple[int, ...]) -> np.ndarray:
  """uint8 [height, sum(widths), 3]: stripe k, widths[k] columns wide, in colour STRIPES[k]."""
  return np.concatenate([np.broadcast_to(STRIPES[k], (height, w, 3))
                         for k, w in enumerate(widths)], axis=1)


def _has_colour(image: np.ndarray, colour) -> bool:
  return bool((image.reshape(-1, 3) == colour).all(-1).any())


def test_pad_keeps_a_wide_image_whole_and_crop_loses_its_sides():
  assert data.PAD_VALUE == 76  # pix2seq's background, 0.3 of [0, 1].
  image = _stripes(32, (16, 16, 16, 16))  # [32, 64, 3]: 2:1.
  padded = data.resize_image(image, 64, 'pad')  # The longer side is already 64: no resampling.
  np.testing.assert_array_equal(padded[:32], image)  # At the top, whole ...
  assert (padded[32:] == data.PAD_VALUE).all()  # ... padded below.
  padded = data.resize_image(image, 32, 'pad')  # Resized to [16, 32], each stripe 8 wide.
  assert padded.shape == (32, 32, 3) and padded.dtype == np.uint8
  assert (padded[16:] == data.PAD_VALUE).all()
  for k, columns in enumerate((slice(0, 6), slice(10, 14), slice(17, 23), slice(26, 32))):
    assert (padded[:16, columns] == STRIPES[k]).all(), k  # Stripe interiors keep their colour.
  cropped = data.resize_image(image, 32, 'crop')  # Shorter side already 32: the middle half.
  np.testing.assert_array_equal(cropped, image[:, 16:48])
  assert not _has_colour(cropped, STRIPES[0]) and not _has_colour(cropped, STRIPES[3])
  # A tall image is padded on the right.
  tall = data.resize_image(image.transpose(1, 0, 2), 64, 'pad')
  np.testing.assert_array_equal(tall[:, :32], image.transpose(1, 0, 2))
  assert (tall[:, 32:] == data.PAD_VALUE).all()


def test_a_4_by_3_image_keeps_its_outer_eighths_only_when_padded():
  image = _stripes(48, (8, 48, 8))  # [48, 64, 3], like a 480x640 COCO photo.
  padded = data.resize_image(image, 32, 'pad')  # Resized to [24, 32].
  assert (padded[24:] == data.PAD_VALUE).all() and not (padded[:24] == PAD).all(-1).any()
  assert (padded[:24, :2] == STRIPES[0]).all() and (padded[:24, 6:26] == STRIPES[1]).all()
  assert (padded[:24, 30:] == STRIPES[2]).all()
  cropped = data.resize_image(image, 32, 'crop')  # Resized to [32, 43], columns 5..36 kept.
  assert (cropped[:, 2:31] == STRIPES[1]).all()
  assert not _has_colour(cropped, STRIPES[0]) and not _has_colour(cropped, STRIPES[2])
  assert not _has_colour(cropped, PAD)


def test_a_square_image_is_unchanged_by_both_modes():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
  for mode in data.RESIZE_MODES:
    np.testing.assert_array_equal(data.resize_image(image, 16, mode), image)
  grey = data.resize_image(image[..., :1], 16, 'pad')  # [H, W, 1] -> RGB.
  np.testing.assert_array_equal(grey, np.repeat(image[..., :1], 3, axis=-1))


def _write_coco(directory, images: dict) -> str:
  """Writes {file_name: (id, PIL image or None, captions)} and a captions file; its path."""
  coco = {'images': [], 'annotations': []}
  for name, (image_id, image, captions) in images.items():
    if image is not None:
      image.save(directory / name)
    coco['images'].append({'id': image_id, 'file_name': name})
    coco['annotations'] += [{'image_id': image_id, 'id': len(coco['annotations']) + 1,
                             'caption': c} for c in captions]
  path = directory / 'captions.json'
  path.write_text(json.dumps(coco))
  return str(path)


def test_an_unknown_resize_mode_names_the_choices_and_the_config_field(tmp_path):
  message = r"data\.resize='stretch'.*'pad'.*'crop'"
  with pytest.raises(ValueError, match=message):
    data.resize_image(np.zeros((4, 8, 3), np.uint8), 4, 'stretch')
  path = _write_coco(tmp_path, {'a.png': (1, Image.new('RGB', (8, 4)), ['a caption'])})
  with pytest.raises(ValueError, match=message):
    data.CocoJsonSource(path, str(tmp_path), 4, resize='stretch')


def test_coco_json_loader(tmp_path):
  red = lambda size: Image.new('RGB', size, (200, 10, 10))
  path = _write_coco(tmp_path, {'a.jpg': (7, red((40, 30)), ['A red picture.', 'all red']),
                                'b.png': (3, red((20, 20)), ['red square']),
                                'c.png': (9, red((8, 8)), [])})  # c has no caption: skipped.
  source = data.CocoJsonSource(path, str(tmp_path), image_size=16)
  assert len(source) == 2
  batch = source.get(np.array([1, 0]))
  assert batch['images'].shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(batch['image_ids'], [7, 3])
  assert batch['captions'] == [['A red picture.', 'all red'], ['red square']]
  assert abs(int(batch['images'][0, 8, 8, 0]) - 200) <= 2  # JPEG.
  assert (batch['images'][0, 12:] == data.PAD_VALUE).all()  # 40x30 -> 16x12, padded below.
  _write_coco(tmp_path, {})
  with pytest.raises(ValueError, match='no image with a caption'):
    data.CocoJsonSource(path, str(tmp_path), 16)


def test_coco_json_sources_pass_the_resize_mode_through(tmp_path):
  image = _stripes(24, (12, 12, 12, 12))  # [24, 48, 3]: 2:1.
  path = _write_coco(tmp_path, {'wide.png': (5, Image.fromarray(image), ['four stripes'])})
  config = ml_collections.ConfigDict(dict(
      name='coco_json', annotations=path, image_dir=str(tmp_path), eval_annotations=path,
      eval_image_dir=str(tmp_path), image_size=24, resize='crop'))
  cropped = data.create_source(config, 'eval').get(np.array([0]))['images'][0]
  np.testing.assert_array_equal(cropped, image[:, 12:36])
  config.resize = 'pad'
  padded = data.create_source(config, 'train').get(np.array([0]))['images'][0]
  np.testing.assert_array_equal(padded, data.resize_image(image, 24, 'pad'))
  assert (padded[12:] == data.PAD_VALUE).all() and (padded[:12, :4] == STRIPES[0]).all()
  assert (padded[:12, 20:] == STRIPES[3]).all()
  default = data.CocoJsonSource(path, str(tmp_path), 24).get(np.array([0]))['images'][0]
  np.testing.assert_array_equal(default, padded)  # 'pad' is the default.
  config.resize = 'stretch'
  with pytest.raises(ValueError, match=r"data\.resize='stretch'"):
    data.create_source(config, 'train')
  # The shapes scenes are square already and need no data.resize.
  shapes = ml_collections.ConfigDict(dict(name='shapes', image_size=16, num_test=500))
  assert data.create_source(shapes, 'eval').get(np.arange(1))['images'].shape == (1, 16, 16, 3)


def test_tfds_coco_captions_under_mock_data():
  with tfds.testing.mock_data(num_examples=4):
    source = data.TfdsCocoSource('train', image_size=24)
    assert len(source) == 4
    batch = source.get(np.array([2, 0]))
    raw = source.data_source[2]['image']  # Mock images are random, of random (non-square) shape.
    cropped = data.TfdsCocoSource('train', image_size=24, resize='crop').get(np.array([2]))
  assert batch['images'].shape == (2, 24, 24, 3) and batch['images'].dtype == np.uint8
  assert len(batch['captions']) == 2 and all(isinstance(c, str) for c in batch['captions'][0])
  assert batch['image_ids'].shape == (2,)
  assert raw.shape[0] != raw.shape[1]
  np.testing.assert_array_equal(batch['images'][0], data.resize_image(raw, 24, 'pad'))
  np.testing.assert_array_equal(cropped['images'][0], data.resize_image(raw, 24, 'crop'))


def test_batches_are_a_pure_function_of_the_step():
  source = scenes.ShapesSource('train', 16)
  tokenizer = tokens.CaptionTokenizer(
      tokens.train_tokenizer(source.all_captions(), 96, 'bpe'), max_length=20)
  make = lambda start, index=0, count=1: data.CaptionBatchIterator(
      source, tokenizer, global_batch_size=8, seed=3, start_step=start, process_index=index,
      process_count=count, prefetch=0)
  straight = make(0)
  batches = [next(straight) for _ in range(3)]
  resumed = next(make(2))
  for key in ('images', 'tokens'):
    np.testing.assert_array_equal(batches[2][key], resumed[key])
  assert batches[0]['tokens'].shape == (8, 20) and batches[0]['images'].dtype == np.int32
  halves = [next(make(0, i, 2)) for i in range(2)]  # Two processes split each global batch.
  np.testing.assert_array_equal(np.concatenate([h['tokens'] for h in halves]),
                                batches[0]['tokens'])
  texts = tokenizer.ids_to_text(batches[0]['tokens'])
  refs = source.get(straight.indices_at(0))['captions']
  assert all(t in r for t, r in zip(texts, refs))  # One of each image's references.
