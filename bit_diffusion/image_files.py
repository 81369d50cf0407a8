"""Image files as training data: a folder of images (`data.name='folder'`), decoded lazily, and
`fit_square` / `fit_array`, which fit an image of any shape to the square training size (also
for TFDS datasets of non-square images, `input_pipeline`)."""

import os

import numpy as np
from PIL import Image

_IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
# PIL modes with 8 bits per channel; 16-bit and float images are refused.
_EIGHT_BIT_MODES = ('1', 'L', 'LA', 'La', 'P', 'PA', 'RGB', 'RGBA', 'RGBa', 'RGBX', 'CMYK',
                    'YCbCr', 'LAB', 'HSV')


class FolderSource:
  """Image files decoded with PIL on demand, resized (shorter side) and centre-cropped."""

  def __init__(self, paths: list[str], labels: np.ndarray, image_size: int, channels: int):
    self.paths, self.labels = paths, labels
    self.image_size, self.mode = image_size, 'RGB' if channels == 3 else 'L'

  def __len__(self) -> int:
    return len(self.paths)

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    images = np.stack([self._decode(int(i)) for i in indices])
    return {'images': images.reshape(len(indices), self.image_size, self.image_size, -1),
            'labels': self.labels[indices]}

  def _decode(self, index: int) -> np.ndarray:
    """Returns uint8 [image_size, image_size(, 3)]."""
    path, size = self.paths[index], self.image_size
    try:
      with Image.open(path) as image:
        image.draft(self.mode, (size, size))  # JPEG: decode at a reduced scale >= size.
        image = image.convert(self.mode)
    except (OSError, ValueError, SyntaxError) as e:
      raise ValueError(f'Cannot decode image {path} (example {index}): {e}. Remove or replace '
                       'the file.') from e
    return np.asarray(fit_square(image, size), np.uint8)


def fit_square(image: Image.Image, size: int) -> Image.Image:
  """The shorter side scaled to `size` (bicubic, antialiased when shrinking), then the centre
  `size` x `size` crop: how 'folder' images and non-square TFDS images become training images."""
  width, height = image.size
  if (width, height) == (size, size):
    return image
  scale = size / min(width, height)
  width, height = max(size, round(width * scale)), max(size, round(height * scale))
  image = image.resize((width, height), Image.Resampling.BICUBIC)
  left, top = (width - size) // 2, (height - size) // 2
  return image.crop((left, top, left + size, top + size))


def fit_array(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] of any H, W -> [size, size, C] by `fit_square` (TFDS images are arrays)."""
  pil_image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)  # Grey: [H, W].
  return np.asarray(fit_square(pil_image, size)).reshape(size, size, -1)


def folder_source(data_config) -> tuple[FolderSource, int, list[str]]:
  """(source, number of classes, class names) of the image files under data.path; top-level
  subfolders (sorted) are classes 0..K-1."""
  root = data_config.path
  if not root or not os.path.isdir(root):
    raise FileNotFoundError(f'Image folder {root!r} not found. Set --config.data.path to a '
                            'directory of images (one subfolder per class for labels).')
  paths = []
  for directory, subdirs, files in os.walk(root, followlinks=True):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith('.'))
    paths += [os.path.join(directory, f) for f in sorted(files)
              if f.lower().endswith(_IMAGE_EXTENSIONS) and not f.startswith('.')]
  if not paths:
    raise FileNotFoundError(f'Folder {root} holds no images ({", ".join(_IMAGE_EXTENSIONS)}); '
                            'set --config.data.path to a folder of images (one subfolder per '
                            'class for labels).')
  if data_config.num_bits < 8:
    raise ValueError(f'Folder {root} holds 8-bit images but data.num_bits='
                     f'{data_config.num_bits}. Set --config.data.num_bits=8.')
  for path in paths:  # Headers only (cheap); pixel data is checked when decoded.
    try:
      with Image.open(path) as image:
        mode = image.mode
    except (OSError, ValueError, SyntaxError) as e:
      raise ValueError(f'Cannot read image {path}: {e}. Remove or replace the file.') from e
    if mode not in _EIGHT_BIT_MODES:
      raise ValueError(f'Image {path} has PIL mode {mode!r}; only 8-bit images are supported.')
  parts = [os.path.relpath(path, root).split(os.sep) for path in paths]
  classes = [p[0] if len(p) > 1 else None for p in parts]  # Top-level subfolder, if any.
  if all(c is None for c in classes):
    return FolderSource(paths, np.zeros(len(paths), np.int32), data_config.image_size,
                        data_config.channels), 0, []
  if any(c is None for c in classes):
    loose = paths[classes.index(None)]
    raise ValueError(f'Folder {root} mixes images in class subfolders with images at the top '
                     f'level (e.g. {loose}). Move every image into a class subfolder, or none.')
  class_names = sorted(set(classes))
  labels = np.array([class_names.index(c) for c in classes], np.int32)
  source = FolderSource(paths, labels, data_config.image_size, data_config.channels)
  return source, len(class_names), class_names
