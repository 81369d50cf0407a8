"""Sample-quality statistics of feature vectors: FID, Inception Score, precision and recall.

All functions take features already computed by a network (`features.py`) and work in float64
numpy, so results do not depend on the device or the batch split.

- FID (Heusel et al. 2017): ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with the trace of
  the matrix square root taken as sum(sqrt(eig(S1^(1/2) S2 S1^(1/2)))), a symmetric
  eigenproblem (no complex `sqrtm` round-off to discard).
- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), averaged over splits.
- Precision and recall (Kynkaanniemi et al. 2019): a generated sample counts as precise if it
  lies inside the k-NN ball of some real sample; a real sample counts as recalled if it lies
  inside the k-NN ball of some generated sample (k = 3 in the paper).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Statistics:
  """Mean [D] and covariance [D, D] of N feature vectors."""
  mu: np.ndarray
  sigma: np.ndarray
  count: int


def statistics(features: np.ndarray) -> Statistics:
  """features [N, D] -> their mean and (unbiased, N - 1) covariance, as pytorch-fid."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f'Need features [N >= 2, D], got shape {features.shape}.')
  return Statistics(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False),
                    count=len(features))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric positive semi-definite matrix."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: Statistics, b: Statistics) -> float:
  """The Frechet distance between Gaussians N(a.mu, a.sigma) and N(b.mu, b.sigma)."""
  if a.mu.shape != b.mu.shape:
    raise ValueError(f'Feature sizes differ: {a.mu.shape} vs {b.mu.shape}.')
  root_a = _sqrt_psd(a.sigma)
  inner = np.linalg.eigvalsh(root_a @ b.sigma @ root_a)  # Eigenvalues of S1 S2, all >= 0.
  trace_sqrt = np.sum(np.sqrt(np.clip(inner, 0, None)))
  diff = a.mu - b.mu
  return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt)


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
  """(mean, std) over `num_splits` equal splits of exp(E KL(p(y|x) || p(y))); logits [N, K]."""
  logits = np.asarray(logits, np.float64)
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))  # log p(y|x), [N, K]
  num_splits = max(1, min(num_splits, len(logits)))
  scores = []
  for part in np.array_split(log_p, num_splits):
    log_marginal = np.log(np.exp(part).mean(axis=0))  # log p(y), [K]
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)  # [n]
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """[n, m] squared Euclidean distances between rows of x [n, D] and y [m, D]."""
  d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
  return np.maximum(d, 0)


def _knn_radii(features: np.ndarray, k: int, block: int) -> np.ndarray:
  """Squared distance from each row to its k-th nearest other row, [N]."""
  radii = np.empty(len(features))
  for start in range(0, len(features), block):
    d = _squared_distances(features[start:start + block], features)
    radii[start:start + block] = np.partition(d, k, axis=1)[:, k]  # Index 0 is the point.
  return radii


def _coverage(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int) -> float:
  """Fraction of queries inside at least one ball (centre, squared radius)."""
  inside = 0
  for start in range(0, len(queries), block):
    d = _squared_distances(queries[start:start + block], centres)
    inside += int(np.any(d <= radii[None, :], axis=1).sum())
  return inside / len(queries)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     block: int = 1000) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019) of fake [M, D] against real [N, D].

  Both sets should have about the same size; the paper uses k = 3.
  """
  real = np.asarray(real, np.float64)
  fake = np.asarray(fake, np.float64)
  if len(real) <= k or len(fake) <= k:
    raise ValueError(f'Precision/recall with k={k} needs more than {k} samples per set.')
  precision = _coverage(fake, real, _knn_radii(real, k, block), block)
  recall = _coverage(real, fake, _knn_radii(fake, k, block), block)
  return precision, recall


def all_metrics(reference: Statistics, real_features: np.ndarray, features: np.ndarray,
                logits: np.ndarray, k: int = 3, num_splits: int = 10) -> dict[str, float]:
  """{'fid', 'is', 'is_std', 'precision', 'recall'} of features [N, D] and logits [N, K].

  FID and IS use all N; precision/recall use the first min(N, M) samples against the M
  `real_features`, so that both sets have the same size, as in Kynkaanniemi et al.
  """
  is_mean, is_std = inception_score(logits, num_splits)
  precision, recall = precision_recall(real_features, features[:len(real_features)], k)
  return {'fid': frechet_distance(statistics(features), reference), 'is': is_mean,
          'is_std': is_std, 'precision': precision, 'recall': recall}
