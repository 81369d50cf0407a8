"""The embedded captioning data: scenes of coloured shapes, rendered here, captioned exactly.

A scene is one or two objects (shape x colour) in distinct cells of a 3x3 grid. Its caption is
fully determined by the image: objects in reading order (top to bottom, left to right), each
"<colour> <shape>" with its cell's name, in one of three phrasings, e.g.

  a red circle at the top left and a blue square at the bottom right
  there is a red circle in the top left and a blue square in the bottom right
  red circle top left and blue square bottom right

All 8,235 scenes (135 with one object, 8,100 with two) are enumerated and split once with a fixed
seed: `num_test` held-out scenes are never trained on, so scoring them measures generalisation to
new combinations of shapes, colours and places. Each scene renders with a small position and size
jitter seeded by its index, so an image is a pure function of (scene, split).
"""

import itertools

import numpy as np

SHAPES = ('circle', 'square', 'triangle')
COLOURS = {'red': (220, 40, 40), 'green': (40, 190, 60), 'blue': (50, 90, 235),
           'yellow': (235, 215, 40), 'white': (240, 240, 240)}
CELLS = ('top left', 'top', 'top right', 'left', 'center', 'right', 'bottom left', 'bottom',
         'bottom right')
PHRASINGS = 3


def all_scenes() -> list[tuple[tuple[str, str, int], ...]]:
  """Every scene: a tuple of (shape, colour, cell) objects in reading order (cells ascending)."""
  objects = list(itertools.product(SHAPES, COLOURS))
  scenes = [((s, c, cell),) for cell in range(len(CELLS)) for s, c in objects]
  for first, second in itertools.combinations(range(len(CELLS)), 2):
    for (s1, c1), (s2, c2) in itertools.product(objects, objects):
      scenes.append(((s1, c1, first), (s2, c2, second)))
  return scenes


def caption(scene, phrasing: int) -> str:
  """One of the PHRASINGS captions of `scene`."""
  if phrasing == 0:
    parts = [f'a {c} {s} at the {CELLS[cell]}' for s, c, cell in scene]
  elif phrasing == 1:
    parts = [f'a {c} {s} in the {CELLS[cell]}' for s, c, cell in scene]
    parts[0] = 'there is ' + parts[0]
  else:
    parts = [f'{c} {s} {CELLS[cell]}' for s, c, cell in scene]
  return ' and '.join(parts)


def render(scene, image_size: int, seed: int) -> np.ndarray:
  """Draws `scene` on black; returns uint8 [image_size, image_size, 3]."""
  rng = np.random.default_rng(seed)
  image = np.zeros((image_size, image_size, 3), np.uint8)
  cell_size = image_size / 3
  y, x = np.mgrid[0:image_size, 0:image_size] + 0.5
  for shape, colour, cell in scene:
    row, col = divmod(cell, 3)
    cy, cx = (np.array([row, col]) + 0.5) * cell_size + rng.uniform(-0.08, 0.08, 2) * cell_size
    r = cell_size * rng.uniform(0.3, 0.4)
    if shape == 'circle':
      mask = (y - cy) ** 2 + (x - cx) ** 2 <= r ** 2
    elif shape == 'square':
      mask = (np.abs(y - cy) <= 0.85 * r) & (np.abs(x - cx) <= 0.85 * r)
    else:  # An upward triangle: below the top vertex, inside both slanted sides.
      mask = (y >= cy - r) & (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) * 0.6)
    image[mask] = COLOURS[colour]
  return image


class ShapesSource:
  """Random access to one split of the scenes ('train' or 'test').

  get(indices) -> {'images': uint8 [n, S, S, 3], 'captions': n lists of PHRASINGS strings,
  'image_ids': int64 [n]} where image ids are the scenes' indices in `all_scenes()`.
  """

  def __init__(self, split: str, image_size: int, num_test: int = 500, seed: int = 0):
    scenes = all_scenes()
    order = np.random.default_rng(seed).permutation(len(scenes))
    if split == 'train':
      self.ids = np.sort(order[num_test:])
    elif split == 'test':
      self.ids = np.sort(order[:num_test])
    else:
      raise ValueError(f"Unknown shapes split {split!r}: use 'train' or 'test'.")
    self.scenes = [scenes[i] for i in self.ids]
    self.image_size = image_size

  def __len__(self) -> int:
    return len(self.ids)

  def get(self, indices: np.ndarray) -> dict:
    indices = np.asarray(indices)
    images = np.stack([render(self.scenes[i], self.image_size, int(self.ids[i]))
                       for i in indices])
    captions = [[caption(self.scenes[i], p) for p in range(PHRASINGS)] for i in indices]
    return {'images': images, 'captions': captions, 'image_ids': self.ids[indices]}

  def all_captions(self) -> list[str]:
    """Every caption of the split (for training a tokenizer)."""
    return [caption(scene, p) for scene in self.scenes for p in range(PHRASINGS)]
