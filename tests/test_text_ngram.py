"""The interpolated Kneser-Ney judge: normalisation, a dictionary oracle, caching, key overflow."""

import collections
import itertools
import math
import os

import numpy as np
import pytest

from bit_diffusion.text import ngram


def _last_probs(model, contexts, vocab_size, short_context='raw'):
  """float64 [len(contexts), vocab_size]: p(v | context) for every v, scoring rows context + [v]."""
  out = []
  for context in contexts:
    rows = np.array([list(context) + [v] for v in range(vocab_size)], np.int64)
    out.append(np.exp(model.log_probs(rows, short_context)[:, -1]))
  return np.array(out)


def _oracle(tokens, vocab_size, order, short_context):
  """p(w, context) by the module docstring's formulas, with Python tuples and Counters."""
  tokens = [int(t) for t in tokens]
  raw = {k: collections.Counter(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1))
         for k in range(1, order + 1)}
  continuation = {k: collections.Counter(gram[1:] for gram in raw[k + 1])
                  for k in range(1, order)}  # Each distinct (k+1)-gram adds 1 to its suffix.

  def discount(counts):
    n1 = sum(c == 1 for c in counts.values())
    n2 = sum(c == 2 for c in counts.values())
    return min(max(n1 / max(n1 + 2 * n2, 1), 0.01), 0.99)

  def level(k, context, w, top):
    if k == 0:
      return 1 / vocab_size
    use_raw = k == order or (k == top and short_context == 'raw')
    counts = raw[k] if use_raw else continuation[k]
    lower = level(k - 1, context[1:], w, top)
    following = {g: c for g, c in counts.items() if g[:-1] == context}
    if not following:
      return lower
    d = discount(counts)
    total = sum(following.values())
    return (max(counts[context + (w,)] - d, 0) + d * len(following) * lower) / total

  def prob(w, context):
    context = tuple(context)[len(context) - min(len(context), order - 1):]
    return level(len(context) + 1, context, w, len(context) + 1)

  return prob


@pytest.mark.parametrize('short_context', ngram.SHORT_CONTEXTS)
def test_probabilities_sum_to_one_over_the_vocabulary(short_context):
  rng = np.random.default_rng(0)
  vocab_size, order = 7, 4
  # A sticky Markov chain over tokens 0..5 (6 never occurs): many contexts seen, many not.
  tokens = [0]
  for _ in range(400):
    tokens.append(int((tokens[-1] + rng.choice([1, 1, 2, 3])) % 6))
  model = ngram.KneserNeyLM.fit(np.array(tokens), vocab_size, order)
  contexts = [(), (0,), (6,), (4, 6), tuple(tokens[10:13]), tuple(tokens[50:52]), (6, 6, 6),
              tuple(tokens[:9]), tuple(rng.integers(0, vocab_size, 3)),
              tuple(rng.integers(0, vocab_size, 6))]
  probs = _last_probs(model, contexts, vocab_size, short_context)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=0, atol=1e-9)
  assert np.all(probs > 0)
  assert probs[1, [0, 4, 5, 6]].max() < 0.01  # Not uniform: only 1, 2, 3 ever follow 0.


@pytest.mark.parametrize('order', [1, 2, 3])
@pytest.mark.parametrize('short_context', ngram.SHORT_CONTEXTS)
def test_matches_a_dictionary_oracle_on_a_tiny_corpus(order, short_context):
  vocab_size = 4  # Token 3 never occurs in training.
  # Chosen so that left and right extension counts differ: N_1+(. g) != N_1+(g .) for some g.
  tokens = np.array([1, 2, 0, 2, 0, 0, 2, 0, 1, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0])
  model = ngram.KneserNeyLM.fit(tokens, vocab_size, order)
  oracle = _oracle(tokens, vocab_size, order, short_context)
  for length in range(order + 1):  # Longer contexts than order - 1 are truncated.
    contexts = list(itertools.product(range(vocab_size), repeat=length))
    got = _last_probs(model, contexts, vocab_size, short_context)
    want = np.array([[oracle(w, context) for w in range(vocab_size)] for context in contexts])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_raw_short_contexts_are_the_lower_order_models_top_levels():
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 5, 300) * (rng.random(300) < 0.7)  # Token 0 frequent.
  rows = rng.integers(0, 5, (20, 8))
  model = ngram.KneserNeyLM.fit(tokens, 5, order=4)
  got = model.log_probs(rows)
  for i in range(3):
    want = ngram.KneserNeyLM.fit(tokens, 5, order=i + 1).log_probs(rows)[:, i]
    np.testing.assert_allclose(got[:, i], want, rtol=1e-13)
  # Token 0: (c(w) - D_1 + D_1 * 5 distinct tokens / vocab 5) / 300, the unigram frequency;
  # 'continuation' gives the continuation unigram's distribution instead.
  counts = np.bincount(tokens, minlength=5)
  assert np.all(counts > 0)
  np.testing.assert_allclose(np.exp(got[:, 0]), counts[rows[:, 0]] / 300, rtol=1e-13)
  assert not np.allclose(model.log_probs(rows, 'continuation')[:, 0], got[:, 0])


def test_periodic_text_is_predicted_almost_surely():
  model = ngram.KneserNeyLM.fit(np.tile([0, 1, 2], 100), vocab_size=5, order=3)
  rows = (np.arange(32)[None] + np.arange(3)[:, None]) % 3  # Held-out windows, 3 phases [3, 32].
  log_probs = model.log_probs(rows)
  assert np.all(np.exp(log_probs[:, 2:]) > 0.99)
  wrong = model.log_probs(np.array([[0, 1, 0], [0, 1, 4]]))[:, 2]
  assert np.all(np.exp(wrong) < 0.01)
  bits = model.bits_per_token(rows)
  assert bits == pytest.approx(-log_probs.mean() / math.log(2))
  assert bits < 0.1 * math.log2(5)


def test_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  model = ngram.KneserNeyLM.fit(rng.integers(0, 6, 500), 6, order=3, discount=0.6)
  path = str(tmp_path / 'lm.npz')
  model.save(path)
  loaded = ngram.KneserNeyLM.load(path)
  rows = rng.integers(0, 6, (10, 12))
  assert (loaded.vocab_size, loaded.order) == (6, 3)
  assert [lv.discount for lv in loaded.raw + loaded.continuation] == [0.6] * 5
  np.testing.assert_array_equal(loaded.log_probs(rows), model.log_probs(rows))
  np.testing.assert_array_equal(loaded.log_probs(rows, 'continuation'),
                                model.log_probs(rows, 'continuation'))


def test_cached_fits_once_per_corpus(tmp_path, monkeypatch):
  fits = []
  fit = ngram.KneserNeyLM.fit
  monkeypatch.setattr(ngram.KneserNeyLM, 'fit',
                      lambda *args, **kwargs: fits.append(1) or fit(*args, **kwargs))
  tokens = np.tile(np.arange(4, dtype=np.int32), 30)
  rows = np.arange(12).reshape(2, 6) % 4
  first = ngram.cached(tokens, 4, 3, str(tmp_path))
  second = ngram.cached(tokens.astype(np.int64), 4, 3, str(tmp_path))  # Same ids, same file.
  assert len(fits) == 1
  files = sorted(os.listdir(tmp_path))
  assert len(files) == 1 and files[0].startswith('kneser_ney_v1_o3_v4_')
  np.testing.assert_array_equal(second.log_probs(rows), first.log_probs(rows))
  ngram.cached(tokens[::-1], 4, 3, str(tmp_path))
  ngram.cached(tokens, 4, 2, str(tmp_path))
  assert len(fits) == 3 and len(os.listdir(tmp_path)) == 3  # No .part files left behind.


def test_keys_that_overflow_int64_are_refused():
  with pytest.raises(ValueError, match=r'50000\^5 > 2\^63 - 1.*use order <= 4'):
    ngram.KneserNeyLM.fit(np.zeros(10, np.int64), 50_000, order=5)
  ngram.KneserNeyLM.fit(np.zeros(10, np.int64), 50_000, order=4)


def test_bad_tokens_are_refused():
  model = ngram.KneserNeyLM.fit(np.array([0, 1, 2]), 3, order=2)
  with pytest.raises(ValueError, match=r'Sequences must lie in \[0, 3\)'):
    model.log_probs(np.array([[0, 3]]))
  with pytest.raises(ValueError, match=r'Training tokens must lie in \[0, 3\)'):
    ngram.KneserNeyLM.fit(np.array([0, 5]), 3, order=2)
