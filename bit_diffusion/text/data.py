"""The text task's data: a corpus tokenised, split, and cut into windows; resumable batches.

Sources (`data.name`):
- 'embedded': the default corpus the library installs (`corpus.embedded_corpus`), no download;
- 'files': a UTF-8 file or a folder of *.txt files (`data.path`), e.g. text8's single file;
- 'lm1b': TFDS `lm1b` (One Billion Word), sentences read with tf.data (`data.data_dir`).

Tokenizers (`tokenizer.kind`): 'text8' and 'bytes' (characters, `corpus.CharacterVocabulary`),
or 'sentencepiece': a SentencePiece model (`tokenizer.path`, or trained at start-up on the
training split), a newline encoded as EOS (each lm1b sentence is followed by one).

Files and the embedded corpus are normalised (text8: lower case a-z and spaces), split by
character into contiguous ranges (`data.splits`: train, validation, test; text8's convention
90M/5M/5M), then tokenised. lm1b has its own train and test splits. Each split's tokens are one
stream, cut into non-overlapping windows of `data.sequence_length` tokens (lines are packed:
a window may hold the end of one sentence and the start of the next).
"""

import dataclasses
import os
from typing import Iterator
from typing import Optional
from typing import Union

import numpy as np
import sentencepiece as spm

from bit_diffusion import batches
from bit_diffusion.captioning import tokens as tokens_lib
from bit_diffusion.text import corpus as corpus_lib

SOURCES = ('embedded', 'files', 'lm1b')
TOKENIZERS = corpus_lib.VOCABULARIES + ('sentencepiece',)
SPLITS = ('train', 'validation', 'test')


class SentencePieceVocabulary:
  """SentencePiece pieces <-> token ids; lines end with EOS (id 1).

  Attributes:
    size: the number of ids (pieces, with PAD 0, EOS 1, UNK 2).
    num_bits: bits per token, ceil(log2(size)).
  """

  def __init__(self, model: bytes, source: str = 'The tokenizer'):
    try:
      self.processor = spm.SentencePieceProcessor(model_proto=model)
    except RuntimeError as e:
      raise ValueError(f'{source} is not a SentencePiece model. Point tokenizer.path at a '
                       ".model file, or set it to '' to train one on the corpus.") from e
    if self.processor.eos_id() != tokens_lib.EOS_ID:
      raise ValueError(f'{source} must have eos_id={tokens_lib.EOS_ID}; train it with '
                       "tokenizer.path='' (or bit_diffusion.captioning.tokens.train_tokenizer).")
    self.model = model
    self.size = self.processor.get_piece_size()
    self.num_bits = tokens_lib.bits_for_vocab(self.size)

  def normalise(self, text: str) -> str:
    return text  # SentencePiece normalises inside encode.

  def encode(self, text: str) -> np.ndarray:
    """int32 [n]: the pieces of each line, lines separated by EOS (a newline is EOS)."""
    ids = []
    for i, line in enumerate(self.processor.encode(text.split('\n'))):
      if i:
        ids.append(tokens_lib.EOS_ID)
      ids += line
    return np.asarray(ids, np.int32)

  def decode(self, ids) -> str:
    """The text of token ids: EOS is a newline; PAD, UNK and ids >= size are dropped."""
    lines, line = [], []
    for token in np.asarray(ids).reshape(-1).tolist():
      if token == tokens_lib.EOS_ID:
        lines.append(self.processor.decode(line))
        line = []
      elif tokens_lib.UNK_ID < token < self.size:
        line.append(token)
    return '\n'.join(lines + [self.processor.decode(line)])


Vocabulary = Union[corpus_lib.CharacterVocabulary, SentencePieceVocabulary]


@dataclasses.dataclass
class TextCorpus:
  """A tokenised corpus.

  Attributes:
    vocabulary: the tokenizer (`size`, `num_bits`, `encode`, `decode`).
    splits: split name -> token ids int32 [n] (a stream; windows are cut from it).
  """
  vocabulary: Vocabulary
  splits: dict[str, np.ndarray]

  def windows(self, split: str, length: int) -> np.ndarray:
    """int32 [n // length, length]: the split's non-overlapping windows."""
    if split not in self.splits:
      raise ValueError(f'This corpus has no split {split!r}; it has {tuple(self.splits)}.')
    tokens = self.splits[split]
    if len(tokens) < length:
      raise ValueError(f'The {split} split has {len(tokens)} tokens, fewer than one window of '
                       f'data.sequence_length={length}: use a longer corpus, a shorter window, '
                       'or a larger share for the split (data.splits).')
    return corpus_lib.windows(tokens, length)


def _check_config(config) -> None:
  if config.data.name not in SOURCES:
    raise ValueError(f'Unknown text data.name {config.data.name!r}; choose one of {SOURCES}.')
  if config.tokenizer.kind not in TOKENIZERS:
    raise ValueError(f'Unknown tokenizer.kind {config.tokenizer.kind!r}; choose one of '
                     f'{TOKENIZERS}.')
  if config.data.name == 'lm1b' and config.tokenizer.kind == 'text8':
    raise ValueError("lm1b keeps case and punctuation: use tokenizer.kind='sentencepiece' or "
                     "'bytes'.")


def create_vocabulary(config, training_text: Optional[Iterator[str]] = None) -> Vocabulary:
  """The tokenizer of `config.tokenizer`. A SentencePiece model is read from tokenizer.path,
  or (path '') trained on `training_text` (lines of the training split)."""
  _check_config(config)
  kind = config.tokenizer.kind
  if kind != 'sentencepiece':
    return corpus_lib.CharacterVocabulary(kind)
  path = config.tokenizer.path
  if path:
    if not os.path.exists(path):
      raise FileNotFoundError(f'No SentencePiece model at tokenizer.path={path!r}. Set it to '
                              "'' to train one on the corpus at start-up.")
    with open(path, 'rb') as f:
      return SentencePieceVocabulary(f.read(), source=path)
  if training_text is None:
    training_text = _lines(config, 'train', config.tokenizer.train_lines)
  model = tokens_lib.train_tokenizer(training_text, config.tokenizer.vocab_size,
                                     config.tokenizer.model_type, lowercase=False)
  return SentencePieceVocabulary(model)


def load_corpus(config, vocabulary: Optional[Vocabulary] = None) -> TextCorpus:
  """The corpus of `config.data`, tokenised by `vocabulary` (default: `create_vocabulary`)."""
  _check_config(config)
  data = config.data
  if data.name == 'lm1b':
    vocabulary = vocabulary or create_vocabulary(config)
    lines = {'train': _lines(config, 'train', data.max_lines), 'test': _lines(config, 'test', 0)}
    # Every sentence followed by EOS.
    return TextCorpus(vocabulary, {name: vocabulary.encode('\n'.join(split_lines) + '\n')
                                   for name, split_lines in lines.items()})
  text = read_text(data)
  if vocabulary is None and config.tokenizer.kind != 'sentencepiece':
    vocabulary = corpus_lib.CharacterVocabulary(config.tokenizer.kind)
  normalise = (vocabulary.normalise if vocabulary is not None
               else lambda t: t)  # SentencePiece normalises itself.
  text = normalise(text)
  if len(data.splits) != len(SPLITS):
    raise ValueError(f'data.splits={tuple(data.splits)} must give the shares of {SPLITS}.')
  ranges = corpus_lib.split_ranges(len(text), data.splits)
  parts = {name: text[start:end] for name, (start, end) in zip(SPLITS, ranges)}
  if vocabulary is None:
    lines = parts['train'].split('\n')
    vocabulary = create_vocabulary(config, lines[:config.tokenizer.train_lines or None])
  return TextCorpus(vocabulary, {name: vocabulary.encode(part) for name, part in parts.items()})


def read_text(data_config) -> str:
  """The raw text of data.name 'embedded' or 'files' (data.path), checked non-empty."""
  if data_config.name == 'embedded':
    text = corpus_lib.embedded_corpus()
  else:
    if not data_config.path:
      raise ValueError("data.name='files' needs data.path: a UTF-8 text file or a folder of "
                       '*.txt files.')
    text = corpus_lib.read_corpus(data_config.path)
  if not text.strip():
    raise ValueError(f'The text corpus {data_config.path or data_config.name!r} is empty.')
  return text


def _lines(config, split: str, max_lines: int) -> list[str]:
  """The lines of a split: lm1b's sentences (TFDS), or the lines of the corpus text."""
  data = config.data
  if data.name != 'lm1b':
    text = read_text(data)
    start, end = corpus_lib.split_ranges(len(text), data.splits)[SPLITS.index(split)]
    lines = text[start:end].split('\n')
    return lines[:max_lines] if max_lines else lines
  import tensorflow_datasets as tfds  # Slow to import; only lm1b needs it.
  tfds_split = data.train_split if split == 'train' else data.eval_split
  try:
    dataset = tfds.load('lm1b', split=tfds_split, data_dir=data.data_dir or None,
                        download=data.download)
  except Exception as e:  # Missing data or no network.
    raise FileNotFoundError(
        f'Cannot open TFDS lm1b split {tfds_split!r} in data_dir {data.data_dir or "(default)"}:'
        f' {e}. Build it where there is network with `tfds build lm1b --data_dir=DIR` and pass '
        '--config.data.data_dir=DIR.') from e
  if max_lines:
    dataset = dataset.take(max_lines)
  lines = []
  for batch in tfds.as_numpy(dataset.batch(4096)):
    lines += [t.decode('utf-8') for t in batch['text']]
  if not lines:
    raise ValueError(f'TFDS lm1b split {tfds_split!r} is empty.')
  return lines


class WindowSource:
  """Random access to windows int32 [n, L]: get(indices) -> {'tokens': int32 [k, L]}."""

  def __init__(self, windows: np.ndarray):
    self.windows = windows

  def __len__(self) -> int:
    return len(self.windows)

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {'tokens': self.windows[np.asarray(indices)]}


class TextBatchIterator(batches.BatchIterator):
  """BatchIterator over windows: {'tokens': int32 [b, L]}, order a pure function of
  (seed, step), sliced per process."""

  def __init__(self, source: WindowSource, **kwargs):
    super().__init__(source, random_flip=False, **kwargs)

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    return self.source.get(self.indices_at(step))
