"""Captioning data: the embedded scenes, the COCO-format loader, TFDS coco_captions, batches."""

import json

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


def test_coco_json_loader(tmp_path):
  for name, size in (('a.jpg', (40, 30)), ('b.png', (20, 20)), ('c.png', (8, 8))):
    Image.new('RGB', size, (200, 10, 10)).save(tmp_path / name)
  coco = {'images': [{'id': 7, 'file_name': 'a.jpg'}, {'id': 3, 'file_name': 'b.png'},
                     {'id': 9, 'file_name': 'c.png'}],  # c has no caption: skipped.
          'annotations': [{'image_id': 7, 'id': 1, 'caption': 'A red picture.'},
                          {'image_id': 3, 'id': 2, 'caption': 'red square'},
                          {'image_id': 7, 'id': 3, 'caption': 'all red'}]}
  path = tmp_path / 'captions.json'
  path.write_text(json.dumps(coco))
  source = data.CocoJsonSource(str(path), str(tmp_path), image_size=16)
  assert len(source) == 2
  batch = source.get(np.array([1, 0]))
  assert batch['images'].shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(batch['image_ids'], [7, 3])
  assert batch['captions'] == [['A red picture.', 'all red'], ['red square']]
  assert abs(int(batch['images'][0, 8, 8, 0]) - 200) <= 2
  path.write_text(json.dumps({'images': [], 'annotations': []}))
  with pytest.raises(ValueError, match='no image with a caption'):
    data.CocoJsonSource(str(path), str(tmp_path), 16)


def test_tfds_coco_captions_under_mock_data():
  with tfds.testing.mock_data(num_examples=4):
    source = data.TfdsCocoSource('train', image_size=24)
    assert len(source) == 4
    batch = source.get(np.array([2, 0]))
  assert batch['images'].shape == (2, 24, 24, 3) and batch['images'].dtype == np.uint8
  assert len(batch['captions']) == 2 and all(isinstance(c, str) for c in batch['captions'][0])
  assert batch['image_ids'].shape == (2,)


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
