"""An interpolated Kneser-Ney n-gram language model over token ids: the generative-perplexity judge.

Fitted once on the training split of a corpus and cached, it scores generated text independently
of the models being compared. Pure numpy: each table holds the distinct k-grams as sorted int64
keys (the tokens read as digits of base `vocab_size`, first token most significant, as in
`metrics.ngram_counts`), looked up with `np.searchsorted`.

The model (Chen & Goodman 1999, "An Empirical Study of Smoothing Techniques for Language
Modeling", Sec. 2.7, the interpolated form of Kneser-Ney smoothing). For a k-gram h w (a context
h of k - 1 tokens, then w), with h' the context h without its first token:

  p_k(w | h) = max(c_k(h w) - D_k, 0) / c_k(h .) + D_k N_k(h .) / c_k(h .) * p_{k-1}(w | h')
  p_k(w | h) = p_{k-1}(w | h')       when c_k(h .) = 0 (a context never seen at this level),
  p_0(w)     = 1 / vocab_size        (so every token has positive probability),

where c_k(h .) = sum_w c_k(h w) and N_k(h .) = |{w : c_k(h w) > 0}|. The counts c_k are
- at the highest order k = `order`: the raw counts of the k-grams in the training tokens;
- at lower orders k < `order`: the continuation counts N_{1+}(. h w) = |{v : c(v h w) > 0}|, the
  number of distinct tokens seen before h w (so a k-gram seen only at the very start of the
  training tokens has continuation count 0).
These probabilities sum to 1 over w at every level when 0 < D_k <= 1 (the counts are integers).
One discount per level (Ney et al. 1994, as Chen & Goodman use it), from the counts-of-counts of
the counts c_k that level uses: D_k = n1 / (n1 + 2 n2), clipped to DISCOUNT_BOUNDS.

Positions near the start of a row. A row is a window of running text with nothing known before
it: token i is scored given the min(i, order - 1) tokens before it in its row. With
`short_context='raw'` (the default) a token with a context of i < order - 1 tokens is scored by
the interpolated KN model of order i + 1, which uses the raw counts (and their discount) at its
top order i + 1 and continuation counts below; this is the probability `fit(..., order=i + 1)`
gives, the KN estimate of p(w | the i tokens known). Token 0 thus gets
  (max(c(w) - D_1, 0) + D_1 * (number of distinct tokens) / vocab_size) / (number of tokens),
the discounted unigram frequency. With `short_context='continuation'` the order-`order` model's
own lower-order distribution p_{i+1} above (continuation counts) is used instead; for token 0,
the continuation unigram N_{1+}(. w) / N_{1+}(. .) interpolated with the uniform distribution,
which KN designs for backing off and which is nearly uniform for characters (every character
follows most others).
"""

import hashlib
import os
import time
from collections.abc import Sequence

import numpy as np
from absl import logging

from bit_diffusion.text.metrics import _run_starts
from bit_diffusion.text.metrics import ngram_counts

VERSION = 1
DISCOUNT_BOUNDS = (0.01, 0.99)  # Estimated discounts are clipped to [0.01, 0.99].
SHORT_CONTEXTS = ('raw', 'continuation')
_INT64_MAX = np.iinfo(np.int64).max


class _Level:
  """One level k of the recursion: the k-grams' keys int64 [K] (sorted) and counts int64 [K],
  the discount D_k, and per context h (the key // vocab_size): its total c_k(h .) and its number
  of distinct next tokens N_k(h .), int64 [C], keyed by the sorted context keys int64 [C]."""

  def __init__(self, keys: np.ndarray, counts: np.ndarray, discount: float, vocab_size: int):
    self.keys, self.counts, self.discount = keys, counts, float(discount)
    prefixes = keys // vocab_size  # Sorted, as the keys are.
    starts = _run_starts(prefixes)
    self.context_keys = prefixes[starts]
    self.context_totals = (np.add.reduceat(counts, starts) if len(starts)
                           else np.zeros(0, np.int64))
    self.context_types = np.diff(np.append(starts, len(keys))).astype(np.int64)

  def interpolate(self, grams: np.ndarray, lower: np.ndarray, vocab_size: int) -> np.ndarray:
    """p_k(w | h) float64 [...] of the k-grams h w (keys int64 [...]), given p_{k-1}(w | h')."""
    if not len(self.keys):
      return lower
    seen, context = _lookup(self.context_keys, grams // vocab_size)
    found, gram = _lookup(self.keys, grams)
    count = np.where(found, self.counts[gram], 0)
    total = np.where(seen, self.context_totals[context], 1)
    types = np.where(seen, self.context_types[context], 0)
    mixed = (np.maximum(count - self.discount, 0.0) + self.discount * types * lower) / total
    return np.where(seen, mixed, lower)


def _lookup(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(found bool [...], index int [...]) of queries [...] in the non-empty sorted_keys [K]: the
  index of each query where found, some valid index where not."""
  index = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
  return sorted_keys[index] == queries, index


def _check_key_size(vocab_size: int, order: int) -> None:
  """Raises a ValueError when order-grams of vocab_size tokens overflow an int64 key."""
  if vocab_size ** order > _INT64_MAX:
    fits = 0
    while vocab_size ** (fits + 1) <= _INT64_MAX:
      fits += 1
    raise ValueError(f'An order-{order} model of a vocabulary of {vocab_size} needs keys up to '
                     f'{vocab_size}^{order} > 2^63 - 1, which do not fit in int64; use order '
                     f'<= {fits}.')


def _estimate_discount(counts: np.ndarray) -> float:
  """D = n1 / (n1 + 2 n2) of the counts [K] (n_r: how many are r), clipped to DISCOUNT_BOUNDS."""
  n1, n2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
  return float(np.clip(n1 / max(n1 + 2 * n2, 1), *DISCOUNT_BOUNDS))


def _check_tokens(tokens: np.ndarray, vocab_size: int, what: str) -> np.ndarray:
  if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f'{what} must be integer token ids; got dtype {tokens.dtype}.')
  if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
    raise ValueError(f'{what} must lie in [0, {vocab_size}); got {tokens.min()}..{tokens.max()}.')
  return tokens.astype(np.int64)


class KneserNeyLM:
  """An interpolated Kneser-Ney model of order `order` (see the module docstring).

  Attributes: vocab_size, order; raw: the levels k = 1..order with raw counts; continuation: the
  levels k = 1..order-1 with continuation counts (each with .keys, .counts, .discount).
  """

  def __init__(self, vocab_size: int, order: int, raw: Sequence[_Level],
               continuation: Sequence[_Level]):
    self.vocab_size, self.order = int(vocab_size), int(order)
    self.raw, self.continuation = list(raw), list(continuation)

  @classmethod
  def fit(cls, train_tokens: np.ndarray, vocab_size: int, order: int = 6,
          discount: float | Sequence[float] | None = None) -> 'KneserNeyLM':
    """Counts the 1..order-grams of train_tokens int [T] (one running text).

    discount: None estimates D_k per level (module docstring); a float or `order` floats (one per
    order k, used for its raw and continuation levels) in (0, 1] fix it.
    """
    if order < 1:
      raise ValueError(f'The order must be at least 1; got {order}.')
    _check_key_size(vocab_size, order)
    tokens = np.asarray(train_tokens)
    if tokens.ndim != 1:
      raise ValueError(f'Training tokens must be a 1-D array; got shape {tokens.shape}.')
    tokens = _check_tokens(tokens, vocab_size, 'Training tokens')
    if discount is not None:
      discounts = np.broadcast_to(np.asarray(discount, np.float64), (order,))
      if np.any(discounts <= 0) or np.any(discounts > 1):
        raise ValueError(f'Discounts must lie in (0, 1]; got {discount}.')

    def level(keys, counts, k):
      d = _estimate_discount(counts) if discount is None else discounts[k - 1]
      return _Level(keys, counts, d, vocab_size)

    raw, continuation = [], []
    for k in range(1, order + 1):
      keys, counts = ngram_counts(tokens[None], k, vocab_size)  # Sorted distinct k-grams [K].
      raw.append(level(keys, counts, k))
      if k > 1:  # N_{1+}(. g): how many distinct k-grams end in the (k-1)-gram g.
        suffixes = np.sort(keys % vocab_size ** (k - 1))
        starts = _run_starts(suffixes)
        continuation.append(level(suffixes[starts],
                                  np.diff(np.append(starts, len(suffixes))).astype(np.int64),
                                  k - 1))
    return cls(vocab_size, order, raw, continuation)

  def log_probs(self, sequences: np.ndarray, short_context: str = 'raw') -> np.ndarray:
    """float64 [N, L]: ln p(token i | the min(i, order - 1) tokens before it in its row) of
    sequences int [N, L]; short_context: how the first order - 1 tokens of a row are scored
    ('raw' or 'continuation', module docstring)."""
    if short_context not in SHORT_CONTEXTS:
      raise ValueError(f'short_context must be one of {SHORT_CONTEXTS}; got {short_context!r}.')
    tokens = np.asarray(sequences)
    if tokens.ndim != 2:
      raise ValueError(f'Sequences must be an int array [N, L]; got shape {tokens.shape}.')
    tokens = _check_tokens(tokens, self.vocab_size, 'Sequences')
    v = self.vocab_size
    probs = np.full(tokens.shape, 1.0 / v)  # p_0 [N, L].
    grams = tokens.copy()  # The k-gram ending at each position i >= k - 1 [N, L].
    for k in range(1, min(self.order, tokens.shape[1]) + 1):
      if k > 1:
        grams[:, k - 1:] += tokens[:, :1 - k] * v ** (k - 1)
      ending, lower = grams[:, k - 1:], probs[:, k - 1:]  # Positions k - 1.. [N, L - k + 1].
      if k == self.order:
        probs[:, k - 1:] = self.raw[k - 1].interpolate(ending, lower, v)
        continue
      new = self.continuation[k - 1].interpolate(ending, lower, v)
      if short_context == 'raw':  # Position k - 1 has k - 1 tokens of context: top level k.
        new[:, 0] = self.raw[k - 1].interpolate(ending[:, 0], lower[:, 0], v)
      probs[:, k - 1:] = new
    return np.log(probs)

  def bits_per_token(self, sequences: np.ndarray, short_context: str = 'raw') -> float:
    """Mean -log2 p over all tokens of sequences int [N, L] (see log_probs)."""
    return float(-np.mean(self.log_probs(sequences, short_context)) / np.log(2))

  def save(self, path: str) -> None:
    """Writes the count tables and discounts to `path` (.npz)."""
    arrays = {'version': np.int64(VERSION), 'vocab_size': np.int64(self.vocab_size),
              'order': np.int64(self.order)}
    for kind, levels in (('raw', self.raw), ('continuation', self.continuation)):
      arrays[f'{kind}_discounts'] = np.array([lv.discount for lv in levels], np.float64)
      for k, lv in enumerate(levels, 1):
        arrays[f'{kind}_keys_{k}'], arrays[f'{kind}_counts_{k}'] = lv.keys, lv.counts
    with open(path, 'wb') as f:  # A file object: np.savez would append .npz to a bare name.
      np.savez(f, **arrays)

  @classmethod
  def load(cls, path: str) -> 'KneserNeyLM':
    """The model `save` wrote to `path`."""
    with np.load(path, allow_pickle=False) as data:
      if int(data['version']) != VERSION:
        raise ValueError(f'{path} holds a version {int(data["version"])} Kneser-Ney model; this '
                         f'code reads version {VERSION}. Delete it to refit.')
      vocab_size, order = int(data['vocab_size']), int(data['order'])
      levels = {}
      for kind, num in (('raw', order), ('continuation', order - 1)):
        discounts = data[f'{kind}_discounts']
        levels[kind] = [_Level(data[f'{kind}_keys_{k}'], data[f'{kind}_counts_{k}'],
                               discounts[k - 1], vocab_size) for k in range(1, num + 1)]
    return cls(vocab_size, order, levels['raw'], levels['continuation'])


def cache_path(train_tokens: np.ndarray, vocab_size: int, order: int, cache_dir: str) -> str:
  """cache_dir/kneser_ney_v{VERSION}_o{order}_v{vocab_size}_{fingerprint}.npz, the fingerprint
  the first 12 hex digits of sha256(tokens as little-endian int64, vocab_size, order, VERSION)."""
  digest = hashlib.sha256(np.ascontiguousarray(train_tokens, '<i8').tobytes())
  digest.update(f'vocab={vocab_size},order={order},version={VERSION}'.encode())
  return os.path.join(cache_dir, f'kneser_ney_v{VERSION}_o{order}_v{vocab_size}_'
                                 f'{digest.hexdigest()[:12]}.npz')


def cached(train_tokens: np.ndarray, vocab_size: int, order: int, cache_dir: str) -> KneserNeyLM:
  """The model of train_tokens int [T] with estimated discounts: loaded from cache_dir, or fitted
  and stored there (written to a temporary file, then renamed, so readers never see a part)."""
  train_tokens = np.asarray(train_tokens)
  path = cache_path(train_tokens, vocab_size, order, cache_dir)
  if os.path.exists(path):
    return KneserNeyLM.load(path)
  start = time.time()
  model = KneserNeyLM.fit(train_tokens, vocab_size, order)
  os.makedirs(os.path.abspath(cache_dir), exist_ok=True)
  part = f'{path}.{os.getpid()}.part'  # Unique per process.
  model.save(part)
  os.replace(part, path)
  logging.info('Fitted an order-%d Kneser-Ney model on %d tokens in %.1f s; cached in %s.',
               order, len(train_tokens), time.time() - start, path)
  return model
