"""Output files that never overwrite earlier ones: a name that is free, reserved atomically.

Sample and eval files carry what makes them differ in their names (step, sampler, count, seed);
when a file of that name exists already (the same settings run twice), `reserve` picks
NAME_2, NAME_3, ... instead. Locally the first file is created with O_CREAT | O_EXCL, so two
processes sampling at once cannot pick the same name; on cloud storage (gs://), which has no
atomic create, the check is a plain existence test (best effort).
"""

import os

from etils import epath


def reserve(stem: str, extensions: tuple[str, ...]) -> str:
  """A free stem: `stem`, else `stem_2`, `stem_3`, ... such that no STEM + ext exists yet.

  `extensions` (e.g. ('.npz', '.png')) are the files the caller will write; the first one is
  created empty here (atomically for local paths), so it is reserved until the caller writes it.
  Creates the parent folder if needed. Returns the chosen stem.
  """
  epath.Path(stem).parent.mkdir(parents=True, exist_ok=True)
  for index in range(1, 100_000):
    candidate = stem if index == 1 else f'{stem}_{index}'
    if any(epath.Path(candidate + ext).exists() for ext in extensions[1:]):
      continue
    if create_exclusive(candidate + extensions[0]):
      return candidate
  raise FileExistsError(f'{stem}: 100,000 files of that name exist; pick another workdir.')


def create_exclusive(path: str, text: str = '') -> bool:
  """Creates the file `path` holding `text`; False if it exists already.

  Atomic for local paths (O_CREAT | O_EXCL: of two processes exactly one creates it); on cloud
  storage (gs://), which has no atomic create, an existence test and then a write.
  """
  if '://' in path:
    if epath.Path(path).exists():
      return False
    epath.Path(path).write_text(text)
    return True
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  return True
