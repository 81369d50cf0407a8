"""Text sample statistics: n-gram distributions, total variation, distinct-n, rep-n, baselines."""

import collections
import math

import numpy as np
import pytest

from bit_diffusion.text import metrics


def _brute_force_distribution(rows, n, vocab_size):
  """(keys, probs) of the n-grams of `rows` by Python tuples and a Counter: the oracle."""
  counter = collections.Counter(tuple(row[i:i + n]) for row in rows
                                for i in range(len(row) - n + 1))
  keys = {sum(int(t) * vocab_size ** (n - 1 - j) for j, t in enumerate(gram)): count
          for gram, count in counter.items()}
  total = sum(counter.values())
  return np.array(sorted(keys), np.int64), np.array([keys[k] / total for k in sorted(keys)])


@pytest.mark.parametrize('n', [1, 2, 3])
def test_ngram_distribution_matches_a_brute_force_counter(n):
  rng = np.random.default_rng(n)
  ragged = [rng.integers(0, 5, size=length) for length in rng.integers(0, 12, size=40)]
  square = rng.integers(0, 5, size=(30, 9)).astype(np.int32)
  for batch in (ragged, square):
    keys, probs = metrics.ngram_distribution(batch, n, 5)
    want_keys, want_probs = _brute_force_distribution(list(batch), n, 5)
    assert keys.dtype == np.int64 and probs.dtype == np.float64
    np.testing.assert_array_equal(keys, want_keys)
    np.testing.assert_allclose(probs, want_probs, rtol=1e-12)


@pytest.mark.parametrize('n', [1, 2, 4])
def test_distinct_repetition_and_tv_match_brute_force(n):
  rng = np.random.default_rng(10 + n)
  rows = [rng.integers(0, 3, size=length) for length in rng.integers(0, 15, size=30)]
  reference = [rng.integers(0, 3, size=length) for length in rng.integers(n, 10, size=10)]
  grams = [[tuple(row[i:i + n]) for i in range(len(row) - n + 1)] for row in rows]
  pooled = [gram for row in grams for gram in row]
  assert metrics.distinct_n(rows, n, 3) == pytest.approx(len(set(pooled)) / len(pooled))
  assert metrics.repetition_rate(rows, n, 3) == pytest.approx(
      np.mean([1 - len(set(row)) / len(row) for row in grams if row]))
  p = collections.Counter(pooled)
  q = collections.Counter(tuple(row[i:i + n]) for row in reference
                          for i in range(len(row) - n + 1))
  want = 0.5 * sum(abs(p[k] / p.total() - q[k] / q.total()) for k in set(p) | set(q))
  assert metrics.ngram_tv(rows, reference, n, 3) == pytest.approx(want)


def test_ngrams_never_cross_sequence_boundaries():
  keys, counts = metrics.ngram_counts([[0, 1], [1, 0]], 2, vocab_size=2)
  np.testing.assert_array_equal(keys, [0 * 2 + 1, 1 * 2 + 0])  # (0, 1) and (1, 0); no (1, 1).
  np.testing.assert_array_equal(counts, [1, 1])
  keys, counts = metrics.ngram_counts([[0, 1, 1], [1], [], [1, 0]], 2, vocab_size=3)
  np.testing.assert_array_equal(keys, [1, 3, 4])  # (0, 1), (1, 0), (1, 1).
  np.testing.assert_array_equal(counts, [1, 1, 1])
  keys, _ = metrics.ngram_counts(np.array([[2, 0, 1]]), 3)  # Base max token + 1 = 3.
  np.testing.assert_array_equal(keys, [2 * 9 + 0 * 3 + 1])


def test_total_variation_exact_values():
  p = (np.array([0, 1, 2]), np.array([0.5, 0.25, 0.25]))
  q = (np.array([1, 3]), np.array([0.5, 0.5]))
  assert metrics.total_variation(p, q) == pytest.approx(0.75)  # 0.5 * (.5 + .25 + .25 + .5)
  assert metrics.total_variation(q, p) == pytest.approx(0.75)
  assert metrics.total_variation(p, p) == 0.0
  disjoint = (np.array([5, 9]), np.array([0.9, 0.1]))
  assert metrics.total_variation(p, disjoint) == pytest.approx(1.0)


def test_ngram_tv_of_small_examples():
  assert metrics.ngram_tv([[0, 1, 0, 1]], [[0, 0, 0, 0]], 1, 2) == pytest.approx(0.5)
  assert metrics.ngram_tv([[0, 1, 0, 1]], [[0, 0, 0, 0]], 2, 2) == pytest.approx(1.0)
  # Bigrams 01: 2/3, 10: 1/3 against 01: 1/2, 10: 1/2 (no 11 across the rows).
  assert metrics.ngram_tv([[0, 1, 0, 1]], [[0, 1], [1, 0]], 2, 2) == pytest.approx(1 / 6)


def test_distinct_n_counts_repeats_pooled_over_the_batch():
  assert metrics.distinct_n([[0, 1, 0, 1, 0]], 1) == pytest.approx(2 / 5)
  assert metrics.distinct_n([[0, 1, 0, 1, 0]], 2) == pytest.approx(2 / 4)
  assert metrics.distinct_n([[0, 1, 0, 1, 0]], 3) == pytest.approx(2 / 3)
  assert metrics.distinct_n([[0, 1, 2], [0, 1, 2]], 2) == pytest.approx(2 / 4)  # Pooled.
  assert metrics.distinct_n([[0, 1], [2]], 3) == 0.0


def test_repetition_rate_is_per_sequence_then_averaged():
  length = 10
  assert metrics.repetition_rate([[7] * length], 4) == pytest.approx(1 - 1 / (length - 3))
  assert metrics.repetition_rate([[0, 1, 2, 3], [0, 1, 2, 3]], 4) == 0.0  # Not pooled.
  # (6/7 + 0) / 2; the sequence of 2 tokens has no 4-gram and is left out.
  assert metrics.repetition_rate([[5] * 10, [0, 1, 2, 3, 4], [1, 2]], 4) == pytest.approx(3 / 7)
  assert metrics.repetition_rate([[0, 1, 0, 1, 0, 1]], 2) == pytest.approx(1 - 2 / 5)
  assert metrics.repetition_rate([[1, 2]], 4) == 0.0


def test_unigram_sampler_matches_training_frequencies():
  train = np.repeat(np.arange(8), [0, 5000, 3000, 1500, 0, 400, 100, 0])  # Tokens 0, 4, 7 unseen.
  want = np.bincount(train, minlength=8) / len(train)
  samples = metrics.unigram_sampler(train, 8, num=200, length=500, seed=0)
  assert samples.dtype == np.int32 and samples.shape == (200, 500)
  got = np.bincount(samples.ravel(), minlength=8) / samples.size
  tolerance = 5 * np.sqrt(want * (1 - want) / samples.size)  # 5 binomial standard errors.
  assert np.all(np.abs(got - want) <= tolerance), (got, want)
  assert got[[0, 4, 7]].sum() == 0  # Never a token unseen in training.
  np.testing.assert_array_equal(samples, metrics.unigram_sampler(train, 8, 200, 500, seed=0))
  assert not np.array_equal(samples, metrics.unigram_sampler(train, 8, 200, 500, seed=1))


def test_word_ids_share_one_vocabulary_across_texts():
  ids, vocab_size = metrics.word_ids(['the cat sat', ' the  dog\nsat ', ''])
  assert vocab_size == 4
  assert all(row.dtype == np.int32 for row in ids)
  np.testing.assert_array_equal(ids[0], [0, 1, 2])
  np.testing.assert_array_equal(ids[1], [0, 3, 2])
  assert ids[2].shape == (0,)
  assert metrics.distinct_n(ids, 1, vocab_size) == pytest.approx(4 / 6)


def test_bits_per_token():
  assert metrics.bits_per_token(math.log(2) * 10, 10) == pytest.approx(1.0, rel=1e-15)
  assert metrics.bits_per_token(math.log(2) * 6, 3) == pytest.approx(2.0, rel=1e-15)


def test_summary_of_a_degenerate_sample():
  reference = np.arange(5)[None]  # [[0, 1, 2, 3, 4]]
  got = metrics.summary(np.zeros((1, 5), np.int32), reference, 5)
  # Unigrams {0: 1} against uniform 0.2: 0.5 * (0.8 + 4 * 0.2); bigrams disjoint; 4-grams
  # (0,0,0,0) twice.
  assert got == pytest.approx({'unigram_tv': 0.8, 'bigram_tv': 1.0, 'distinct_4': 0.5,
                               'rep_4': 0.5})
  assert metrics.summary(reference, reference, 5) == pytest.approx(
      {'unigram_tv': 0.0, 'bigram_tv': 0.0, 'distinct_4': 1.0, 'rep_4': 0.0})


def test_bad_inputs_get_clear_errors():
  with pytest.raises(ValueError, match=r'\[0, 4\); got 4'):
    metrics.ngram_counts([[0, 4]], 1, vocab_size=4)
  with pytest.raises(ValueError, match='non-negative'):
    metrics.distinct_n([[0, -1]], 1)
  with pytest.raises(ValueError, match='do not fit in one int64'):
    metrics.ngram_counts([[0, 1]], 5, vocab_size=10_000)
  with pytest.raises(ValueError, match='no 3-grams'):
    metrics.ngram_distribution([[0, 1], [1]], 3, 2)
  with pytest.raises(ValueError, match='integers'):
    metrics.ngram_counts([[0.5, 1.0]], 1)
  with pytest.raises(ValueError, match=r'\[N, L\]'):
    metrics.ngram_counts(np.zeros(4, np.int32), 1)
