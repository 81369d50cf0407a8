"""FID, Inception Score and precision/recall against independent computations."""

import numpy as np
import pytest
import scipy.linalg

from bit_diffusion.metrics import fid


def _scipy_frechet(mu1, sigma1, mu2, sigma2):
  """The TTUR / pytorch-fid formula with scipy's general matrix square root."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
  diff = mu1 - mu2
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


@pytest.mark.parametrize('dim', [2, 16, 64])
def test_frechet_distance_matches_scipy_on_random_gaussians(dim):
  rng = np.random.default_rng(dim)
  a = rng.normal(size=(500, dim)) @ rng.normal(size=(dim, dim))
  b = rng.normal(size=(400, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
  sa, sb = fid.statistics(a), fid.statistics(b)
  np.testing.assert_allclose(sa.sigma, np.cov(a, rowvar=False))
  expected = _scipy_frechet(sa.mu, sa.sigma, sb.mu, sb.sigma)
  assert expected > 1
  np.testing.assert_allclose(fid.frechet_distance(sa, sb), expected, rtol=1e-6)
  np.testing.assert_allclose(fid.frechet_distance(sb, sa), expected, rtol=1e-6)  # Symmetric.
  assert abs(fid.frechet_distance(sa, sa)) < 1e-6 * np.trace(sa.sigma)


def test_frechet_distance_of_known_gaussians():
  # N(0, I) vs N(m, 4 I) in d dims: |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d.
  d, m = 5, np.arange(5.0)
  a = fid.Statistics(np.zeros(d), np.eye(d), 10)
  b = fid.Statistics(m, 4 * np.eye(d), 10)
  np.testing.assert_allclose(fid.frechet_distance(a, b), m @ m + d)


def test_inception_score_bounds():
  k = 10
  confident = np.eye(k)[np.arange(1000) % k] * 50.0  # Sure of each class, classes balanced.
  mean, std = fid.inception_score(confident, num_splits=10)
  np.testing.assert_allclose(mean, k, rtol=1e-6)
  assert std < 1e-6
  mean, _ = fid.inception_score(np.zeros((1000, k)))  # Uniform predictions.
  np.testing.assert_allclose(mean, 1.0)
  mean, _ = fid.inception_score(np.eye(k)[np.zeros(1000, int)] * 50.0)  # One class only.
  np.testing.assert_allclose(mean, 1.0, atol=1e-6)


def test_precision_recall():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(300, 8))
  assert fid.precision_recall(real, real) == (1.0, 1.0)
  precision, recall = fid.precision_recall(real, real + 100.0)
  assert precision == 0.0 and recall == 0.0
  # Samples that collapse onto a few real points: precise, but they cover little.
  collapsed = real[:10].repeat(30, axis=0) + 1e-3 * rng.normal(size=(300, 8))
  precision, recall = fid.precision_recall(real, collapsed)
  assert precision == 1.0 and recall < 0.2
  # Samples from a wider distribution: they cover the real data but many are not realistic.
  precision, recall = fid.precision_recall(real, 3 * rng.normal(size=(300, 8)))
  assert precision < 0.5 and recall > 0.7
