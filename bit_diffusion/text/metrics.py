"""Sample-quality statistics of token sequences: n-gram distances, diversity and repetition.

Pure numpy, vectorised (0.05 to 0.2 s per statistic on 1e6 tokens). A "sequence batch" is an
integer array [N, L] or a list of 1-D integer arrays of any lengths. An n-gram is n consecutive
tokens of one sequence, never across sequences; it is encoded as one int64 key, the tokens read as
digits of base `vocab_size` (first token most significant), so vocab_size ** n must fit in int64
(e.g. 256 ** 7, 50,000 ** 4).

- n-gram total variation: 0.5 * sum |p - q| between the n-gram frequencies of samples and of
  reference text; 0 for the same statistics, 1 for disjoint supports.
- distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
  Models"): distinct n-grams / all n-grams, pooled over the batch.
- rep-n (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training", at sequence
  level): 1 - distinct n-grams / n-grams within each sequence, averaged over sequences.
- The unigram sampler draws i.i.d. tokens from the training frequencies: the baseline that
  matches unigram statistics exactly in expectation and nothing beyond them.
"""

import math
from collections.abc import Sequence

import numpy as np

_INT64_MAX = np.iinfo(np.int64).max


def _flatten(sequences) -> tuple[np.ndarray, np.ndarray]:
  """A sequence batch -> (tokens int64 [T], lengths int64 [N]) of its rows, concatenated."""
  if isinstance(sequences, (list, tuple)):
    rows = [np.asarray(row) for row in sequences]
    if any(row.ndim != 1 for row in rows):
      raise ValueError('A list of sequences must hold 1-D token arrays; got shapes '
                       f'{sorted({row.shape for row in rows if row.ndim != 1})}.')
    for row in rows:
      if row.size and not np.issubdtype(row.dtype, np.integer):
        raise ValueError(f'Token ids must be integers; got dtype {row.dtype}.')
    lengths = np.array([len(row) for row in rows], np.int64)
    # Each row cast on its own: an empty list is a float array, which must not make all float.
    tokens = np.concatenate([np.zeros(0, np.int64), *(row.astype(np.int64) for row in rows)])
  else:
    array = np.asarray(sequences)
    if array.ndim != 2:
      raise ValueError(f'Sequences must be an int array [N, L] or a list of 1-D arrays; got '
                       f'shape {array.shape}.')
    lengths = np.full(array.shape[0], array.shape[1], np.int64)
    tokens = array.reshape(-1)
  if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f'Token ids must be integers; got dtype {tokens.dtype}.')
  return tokens.astype(np.int64), lengths


def _ngram_keys(sequences, n: int, vocab_size: int | None) -> tuple[np.ndarray, np.ndarray]:
  """(keys int64 [M], row int64 [M]): every n-gram of the batch as a base-vocab_size number, and
  the index of its sequence; in order of sequence, then position."""
  if n < 1:
    raise ValueError(f'n must be at least 1; got {n}.')
  tokens, lengths = _flatten(sequences)
  if tokens.size and tokens.min() < 0:
    raise ValueError(f'Token ids must be non-negative; got {tokens.min()}.')
  if vocab_size is None:
    vocab_size = int(tokens.max()) + 1 if tokens.size else 1
  elif tokens.size and tokens.max() >= vocab_size:
    raise ValueError(f'Token ids must lie in [0, {vocab_size}); got {tokens.max()}.')
  if vocab_size ** n > _INT64_MAX:
    raise ValueError(f'{n}-grams of a vocabulary of {vocab_size} do not fit in one int64 key '
                     f'({vocab_size}^{n} > 2^63 - 1); use a smaller n.')
  count = len(tokens) - n + 1  # Windows of the concatenation, some across sequence boundaries.
  if count <= 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  keys = np.zeros(count, np.int64)
  for j in range(n):
    keys = keys * vocab_size + tokens[j:j + count]
  row = np.repeat(np.arange(len(lengths)), lengths)[:count]  # Sequence of each start [count].
  row_end = np.cumsum(lengths)[row]  # One past the last token of that sequence.
  inside = np.arange(count) + n <= row_end
  return keys[inside], row[inside]


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
  """int [K]: the index of the first element of each run of equal values in sorted_keys [M].
  (np.sort and a comparison: numpy 2.4's np.unique took 25 times longer on 1e6 keys.)"""
  if not len(sorted_keys):
    return np.zeros(0, np.int64)
  return np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))


def ngram_counts(sequences, n: int,
                 vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(keys int64 [K], counts int64 [K]) of the distinct n-grams, sorted by key.

  A key is sum_j token_j * vocab_size ** (n - 1 - j); vocab_size defaults to max token + 1,
  so pass it to compare the keys of two batches.
  """
  keys = np.sort(_ngram_keys(sequences, n, vocab_size)[0])
  starts = _run_starts(keys)
  return keys[starts], np.diff(np.append(starts, len(keys))).astype(np.int64)


def ngram_distribution(sequences, n: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(keys int64 [K], probs float64 [K]): the n-gram frequencies, sorted by key."""
  keys, counts = ngram_counts(sequences, n, vocab_size)
  if not keys.size:
    raise ValueError(f'The sequences have no {n}-grams (every sequence is shorter than {n}).')
  return keys, counts / counts.sum()


def total_variation(p: tuple[np.ndarray, np.ndarray], q: tuple[np.ndarray, np.ndarray]) -> float:
  """0.5 * sum_k |p_k - q_k| of two sparse distributions (keys [K], probs [K]); a key missing
  from one has probability 0 there."""
  keys = np.concatenate([p[0], q[0]])
  signed = np.concatenate([np.asarray(p[1], np.float64), -np.asarray(q[1], np.float64)])
  if not len(keys):
    return 0.0
  order = np.argsort(keys, kind='stable')
  difference = np.add.reduceat(signed[order], _run_starts(keys[order]))  # p_k - q_k [K]
  return float(0.5 * np.abs(difference).sum())


def ngram_tv(samples, reference, n: int, vocab_size: int) -> float:
  """Total variation between the n-gram distributions of samples and of reference text."""
  return total_variation(ngram_distribution(samples, n, vocab_size),
                         ngram_distribution(reference, n, vocab_size))


def distinct_n(sequences, n: int, vocab_size: int | None = None) -> float:
  """Distinct n-grams / all n-grams, pooled over the batch (Li et al. 2016); 0.0 without
  n-grams."""
  keys = np.sort(_ngram_keys(sequences, n, vocab_size)[0])
  return len(_run_starts(keys)) / len(keys) if len(keys) else 0.0


def repetition_rate(sequences, n: int, vocab_size: int | None = None) -> float:
  """Mean over sequences of 1 - distinct n-grams / n-grams in the sequence (Welleck et al.
  2019's rep-n); sequences shorter than n are left out; 0.0 when all are."""
  keys, row = _ngram_keys(sequences, n, vocab_size)
  if not keys.size:
    return 0.0
  # Rank the keys densely, then sort (sequence, rank) pairs as one int64: sequence * K + rank.
  order = np.argsort(keys)
  starts = _run_starts(keys[order])
  new = np.zeros(len(keys), np.int64)
  new[starts] = 1
  rank = np.empty(len(keys), np.int64)
  rank[order] = np.cumsum(new) - 1  # Index of each n-gram among the distinct ones [M].
  pairs = np.sort(row * len(starts) + rank)
  total = np.bincount(row)
  distinct = np.bincount(pairs[_run_starts(pairs)] // len(starts), minlength=len(total))
  has_ngrams = total > 0
  return float(np.mean(1.0 - distinct[has_ngrams] / total[has_ngrams]))


def unigram_sampler(train_tokens: np.ndarray, vocab_size: int, num: int, length: int,
                    seed: int) -> np.ndarray:
  """int32 [num, length]: tokens drawn i.i.d. from the unigram frequencies of train_tokens [T]
  (only tokens seen in training), with numpy's default_rng(seed)."""
  train_tokens = np.asarray(train_tokens).reshape(-1)
  if not train_tokens.size:
    raise ValueError('The unigram sampler needs at least one training token.')
  if train_tokens.min() < 0 or train_tokens.max() >= vocab_size:
    raise ValueError(f'Training token ids must lie in [0, {vocab_size}); got '
                     f'{train_tokens.min()}..{train_tokens.max()}.')
  counts = np.bincount(train_tokens, minlength=vocab_size)
  seen = np.flatnonzero(counts)
  rng = np.random.default_rng(seed)
  return rng.choice(seen, size=(num, length), p=counts[seen] / counts.sum()).astype(np.int32)


def word_ids(texts: Sequence[str]) -> tuple[list[np.ndarray], int]:
  """(ids int32 [words of text] per text, vocab_size): the whitespace-separated words of all
  texts, numbered in order of first appearance across the texts (so ids are shared)."""
  vocabulary: dict[str, int] = {}
  ids = [np.array([vocabulary.setdefault(word, len(vocabulary)) for word in text.split()],
                  np.int32) for text in texts]
  return ids, len(vocabulary)


def bits_per_token(total_nll_nats: float, num_tokens: int) -> float:
  """The mean negative log-likelihood in bits: total_nll_nats / num_tokens / ln 2."""
  return total_nll_nats / num_tokens / math.log(2)


def summary(samples, reference, vocab_size: int) -> dict[str, float]:
  """Token-level statistics of samples against reference text:
  unigram_tv, bigram_tv: n-gram total variation to the reference (lower is better);
  distinct_4: distinct 4-grams / 4-grams of the samples (compare with the reference's);
  rep_4: repeated 4-grams within a sample (compare with the reference's)."""
  return {
      'unigram_tv': ngram_tv(samples, reference, 1, vocab_size),
      'bigram_tv': ngram_tv(samples, reference, 2, vocab_size),
      'distinct_4': distinct_n(samples, 4, vocab_size),
      'rep_4': repetition_rate(samples, 4, vocab_size),
  }
