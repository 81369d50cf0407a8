"""The text task: unconditional windows of token ids (characters or word pieces).

An example is [L] token ids cut from a corpus (`text/data.py`); there is no condition. The
networks are `transformer.py`'s decoders without a context: a non-causal denoiser for Bit
Diffusion (kind 'denoiser'), a causal one for the autoregressive baseline ('autoregressive'), a
non-causal classifier over token embeddings for the Glauber Generative Model ('glauber').
Samples are written as text, one window per line, and scored by `text/evaluate.py`.
"""

import os
from typing import Any
from typing import Optional

import jax
import numpy as np
from flax import nnx

from bit_diffusion import param_keys
from bit_diffusion import transformer
from bit_diffusion.text import data as data_lib
from bit_diffusion.text import metrics as text_metrics


class TextTask:
  """Windows [L] of token ids in [0, vocab_size), unconditional.

  Attributes:
    vocabulary: the tokenizer (`data_lib.create_vocabulary`).
    example_shape: (L,) with L = data.sequence_length.
    channels_last: False: one value per position.
    num_bits: bits per token, ceil(log2(vocab_size)).
    vocab_size: the number of token ids.
    num_values: 2**num_bits, the ids the bits can spell (a sample may hold ids >= vocab_size,
      which are no token: they decode as U+FFFD, and the statistics count them as symbols of
      their own).
    num_classes: 0 (no labels).
  """
  SIGNATURE_FIELDS = {
      'data': ('sequence_length',),
      'tokenizer': ('kind',),
      'model': ('width', 'depth', 'mlp_dim', 'num_heads', 'positions'),
  }
  channels_last = False
  num_classes = 0

  def __init__(self, config, corpus: Optional[data_lib.TextCorpus] = None):
    self.config = config
    self._corpus = corpus
    self.vocabulary = corpus.vocabulary if corpus else data_lib.create_vocabulary(config)
    self.example_shape = (config.data.sequence_length,)
    self.vocab_size = self.vocabulary.size
    self.num_bits = self.vocabulary.num_bits
    self.num_values = 2**self.num_bits

  def signature(self) -> dict[str, Any]:
    """Checkpoint signature entries beyond the config fields: the vocabulary's size."""
    return {'tokenizer.vocab_size': self.vocab_size}

  @property
  def corpus(self) -> data_lib.TextCorpus:
    """The tokenised corpus (read on first use, with this task's vocabulary)."""
    if self._corpus is None:
      self._corpus = data_lib.load_corpus(self.config, self.vocabulary)
    return self._corpus

  def create_network(self, kind: str, *, rng: jax.Array, in_channels: int = 0,
                     out_channels: int = 0, out_kernel_size: int = 1) -> nnx.Module:
    """'denoiser': (x_t ++ self_cond [B, L, in_channels], gamma [B], cond) -> [B, L,
    out_channels]; 'autoregressive': (tokens_in [B, L], cond) -> logits [B, L, vocab];
    'glauber': (tokens_in [B, L] with phi = vocab, time [B]) -> logits [B, L, vocab]."""
    del out_kernel_size  # A Transformer has no convolution.
    m = self.config.model
    sizes = dict(max_length=self.example_shape[0], width=m.width, depth=m.depth,
                 mlp_dim=m.mlp_dim, num_heads=m.num_heads, positions=m.positions,
                 rngs=param_keys.ParamKeys(rng))
    if kind == 'denoiser':
      return transformer.DenoisingTransformer(in_channels=in_channels,
                                              out_channels=out_channels, **sizes)
    if kind == 'autoregressive':
      return transformer.AutoregressiveTransformer(vocab_size=self.vocab_size, **sizes)
    if kind == 'glauber':
      return transformer.GlauberTransformer(vocab_size=self.vocab_size,
                                            token_scale=self.config.ggm.token_scale, **sizes)
    raise ValueError(f'The text task has no {kind!r} network.')

  def initial_params(self, params: Any) -> Any:
    return params

  # Data.

  def windows(self, split: str) -> np.ndarray:
    """int32 [n, L]: the non-overlapping windows of a split ('train', 'validation', 'test'; lm1b:
    'train', 'test')."""
    return self.corpus.windows(split, self.example_shape[0])

  def train_iterator(self, batch_size: int, seed: int, start_step: int = 0) -> Any:
    """This process's batches {'tokens': int32 [b, L]} of training windows."""
    return data_lib.TextBatchIterator(
        data_lib.WindowSource(self.windows('train')), global_batch_size=batch_size, seed=seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), prefetch=self.config.data.prefetch)

  def split_batch(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, None]:
    """(token ids int32 [B, L], no condition)."""
    return batch['tokens'], None

  def loss_mask(self, tokens: jax.Array) -> None:
    """Every position is scored."""
    del tokens
    return None

  # Sampling.

  def decode(self, tokens: np.ndarray) -> list[str]:
    """int [N, L] -> N texts (a window may cut a character or piece in the middle)."""
    return [self.vocabulary.decode(row) for row in np.asarray(tokens)]

  def preview_conditions(self, num: int) -> tuple[np.ndarray, None]:
    """(zeros int32 [num], which only carry the count, no references)."""
    return np.zeros((num,), np.int32), None

  def write_preview(self, samples: np.ndarray, references: None, step: int, workdir: str,
                    writer) -> None:
    """WORKDIR/samples/text_STEP.txt (one sample per line, newlines shown as U+23CE), the first
    samples and their unigram and bigram distances to held-out text to TensorBoard."""
    del references
    lines = [text.replace('\n', '\u23ce') for text in self.decode(samples)]
    path = os.path.join(workdir, 'samples', f'text_{step:08d}.txt')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
      f.write('\n'.join(lines) + '\n')
    writer.write_texts(step, {'samples': '  \n'.join(f'`{line}`' for line in lines[:8])})
    held_out = self.windows(self.config.data.eval_split)
    writer.write_scalars(step, {
        'preview/unigram_tv': text_metrics.ngram_tv(samples, held_out, 1, self.num_values),
        'preview/bigram_tv': text_metrics.ngram_tv(samples, held_out, 2, self.num_values)})
