"""Captions as token ids and token ids as analog bits: SentencePiece, padding, EOS, decoding.

Paper Sec. 4.3: captions are SentencePiece ids, each written as ceil(log2(vocab)) analog bits
(15 for a 32K vocabulary), at most 64 tokens, so a caption is [64, 15] analog bits.

Padding and EOS policy (the same for diffusion and the autoregressive baseline):
  ids = pieces(caption)[:max_length - 1] ++ [EOS] ++ [PAD] * (max_length - len - 1)
so every row holds exactly one EOS, followed only by PAD. The model learns to generate the EOS
and the padding like any other token. Decoding (`ids_to_text`) reads up to the first EOS or PAD,
and drops ids that are no piece (ids >= vocab_size, which k bits can still spell, and the
control ids PAD, EOS, UNK), so any integer array decodes to clean text and never raises.

Ids: PAD = 0, EOS = 1, UNK = 2 (set when the tokenizer is trained, checked when one is loaded).
"""

import io
import math
import os
from typing import Iterable
from typing import Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def bits_for_vocab(vocab_size: int) -> int:
  """ceil(log2(vocab_size)) bits per token, at least 1 (32000 -> 15, 100 -> 7)."""
  if vocab_size < 2:
    raise ValueError(f'A vocabulary needs at least 2 ids, got {vocab_size}.')
  return max(1, math.ceil(math.log2(vocab_size)))


def train_tokenizer(captions: Iterable[str], vocab_size: int, model_type: str = 'unigram',
                    model_path: str = '', lowercase: bool = True) -> bytes:
  """Trains a SentencePiece model on `captions`; returns it (and writes `model_path`).

  model_type: 'unigram' (SentencePiece's default) or 'bpe'. On a tiny corpus of few distinct
  sentences (the shapes scenes) unigram stops at characters and subwords; 'bpe' learns the words.
  The vocabulary limit is soft (`hard_vocab_limit=False`): a small corpus may give fewer pieces.
  Captions are lower-cased (`lowercase`, as `CaptionTokenizer` encodes them); text keeps case.
  """
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([c.strip().lower() if lowercase else c.strip() for c in captions
                              if c.strip()]), model_writer=model,
      vocab_size=vocab_size, model_type=model_type, character_coverage=1.0,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, hard_vocab_limit=False,
      minloglevel=2)
  data = model.getvalue()
  if model_path:
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    with open(model_path, 'wb') as f:
      f.write(data)
  return data


class CaptionTokenizer:
  """A SentencePiece model plus the fixed length and the bit width of its ids.

  Attributes:
    max_length: tokens per caption, EOS and padding included (paper: 64).
    vocab_size: number of ids of the SentencePiece model.
    num_bits: analog bits per token, ceil(log2(vocab_size)).
  """

  def __init__(self, model: bytes, max_length: int, source: str = 'The tokenizer'):
    try:
      self.processor = spm.SentencePieceProcessor(model_proto=model)
    except RuntimeError as e:
      raise ValueError(f'{source} is not a SentencePiece model (it does not parse as one). '
                       'Point tokenizer.path at a .model file written by SentencePiece, or make '
                       'one with `make tokenizer`.') from e
    if (self.processor.pad_id(), self.processor.eos_id()) != (PAD_ID, EOS_ID):
      raise ValueError(f'The SentencePiece model must have pad_id={PAD_ID} and eos_id={EOS_ID} '
                       f'(got {self.processor.pad_id()}, {self.processor.eos_id()}); train it '
                       'with `make tokenizer` or bit_diffusion.captioning.tokens.train_tokenizer.')
    if max_length < 2:
      raise ValueError(f'max_length must be >= 2 (a piece and EOS), got {max_length}.')
    self.max_length = max_length
    self.vocab_size = self.processor.get_piece_size()
    self.num_bits = bits_for_vocab(self.vocab_size)

  @classmethod
  def from_file(cls, path: str, max_length: int) -> 'CaptionTokenizer':
    if not os.path.exists(path):
      raise FileNotFoundError(f'No SentencePiece model at {path}; make one with `make tokenizer` '
                              'or set tokenizer.path to an existing .model file.')
    with open(path, 'rb') as f:
      return cls(f.read(), max_length, source=path)

  def text_to_ids(self, captions: Sequence[str]) -> np.ndarray:
    """Captions -> int32 [N, max_length]: pieces, one EOS, then PAD (cut to fit)."""
    ids = np.full((len(captions), self.max_length), PAD_ID, np.int32)
    for i, pieces in enumerate(self.processor.encode([c.strip().lower() for c in captions])):
      pieces = pieces[:self.max_length - 1]
      ids[i, :len(pieces)] = pieces
      ids[i, len(pieces)] = EOS_ID
    return ids

  def ids_to_text(self, ids: np.ndarray) -> list[str]:
    """int [N, L] -> N captions: up to the first EOS or PAD, invalid and control ids dropped."""
    texts = []
    for row in np.asarray(ids).reshape(len(ids), -1):
      pieces = []
      for token in row.tolist():
        if token in (EOS_ID, PAD_ID):
          break
        if UNK_ID < token < self.vocab_size and not self.processor.is_control(token):
          pieces.append(token)
      texts.append(self.processor.decode(pieces))
    return texts
