"""Metrics of generated point sets: Wasserstein-2, points off every mode, the ODE's curvature.

- `wasserstein2`: the exact W2 between two equal-size point sets (the optimal matching, found by
  scipy's `linear_sum_assignment` on squared distances): sqrt(min over permutations of the mean
  squared distance). DisCo-Diff's toy reports W2 to the data: 0.118 with latents, 0.27 without.
  Two finite samples of the same distribution are not at 0: `held_out_floor` in `evaluate.py`
  measures that floor with as many fresh points.
- `off_mode_fraction`: the share of points farther than `k` sigma from every mode's mean.
- `mode_report`: W2 split into the modes' weights (TV) and their shapes (W2 within modes).
- `path_curvature`: how much the sampler's path turns per unit of its length, in the
  coordinates of the paper's EDM formulation (see its docstring).
"""

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

# EDM's largest noise level (Karras et al. 2022), the range DisCo-Diff's ODE starts from.
EDM_SIGMA_MAX = 80.0


def wasserstein2(a: np.ndarray, b: np.ndarray) -> float:
  """Exact W2 between the empirical measures of a and b, float [n, D] each (equal n).

  O(n^3) time and n^2 memory: 2,000 points take about 2 s on one CPU core, 4,000 about 13 s.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f'wasserstein2 needs two point sets of the same shape [n, D], got '
                     f'{a.shape} and {b.shape}.')
  cost = cdist(a, b, 'sqeuclidean')
  rows, cols = linear_sum_assignment(cost)
  return float(np.sqrt(cost[rows, cols].mean()))


def off_mode_fraction(points: np.ndarray, means: np.ndarray, sigma: float, k: float = 4.0
                      ) -> float:
  """Share of points [n, 2] farther than k sigma from every mean [M, 2] (a Gaussian puts
  exp(-k^2 / 2) = 0.03% of its points beyond 4 sigma in 2-D)."""
  distances = cdist(np.asarray(points, np.float64), means)
  return float(np.mean(distances.min(axis=1) > k * sigma))


def mode_report(points: np.ndarray, reference: np.ndarray, means: np.ndarray,
                seed: int = 0) -> dict[str, float]:
  """W2 split into the weights of the modes and their shapes, each point given to its nearest
  mean: 'mode_tv', the TV distance between the shares of points per mode of `points` and of
  `reference`; 'within_w2', the mean over modes of the exact W2 between the two sets' points
  of that mode, the larger cut at random to the smaller's size. A finite sample's W2 to fresh
  data is mostly its modes' counts (moving 1% of the mass between neighbouring modes, 2.3
  apart, costs 0.23 of W2): these two tell weights from shapes."""
  points, reference = np.asarray(points, np.float64), np.asarray(reference, np.float64)
  nearest = lambda a: cdist(a, means).argmin(axis=1)
  mine, theirs = nearest(points), nearest(reference)
  num_modes = len(means)
  shares = lambda labels: np.bincount(labels, minlength=num_modes) / len(labels)
  rng = np.random.default_rng(seed)
  within = []
  for mode in range(num_modes):
    a, b = points[mine == mode], reference[theirs == mode]
    size = min(len(a), len(b))
    if size:
      within.append(wasserstein2(rng.permutation(a)[:size], rng.permutation(b)[:size]))
  return {'mode_tv': float(0.5 * np.abs(shares(mine) - shares(theirs)).sum()),
          'within_w2': float(np.mean(within)) if within else float('nan')}


def path_curvature(path: np.ndarray, gammas: np.ndarray,
                   sigma_max: float = EDM_SIGMA_MAX) -> dict[str, float]:
  """Curvature of sampler paths: the change of the unit tangent per unit length along them.

  DisCo-Diff (App., toy) measures the curvature of the EDM ODE, whose state is
  x_bar = x0 + sigma eps (sigma = sqrt((1 - gamma) / gamma)); our variance-preserving state is
  x = sqrt(gamma) x_bar, so the path is mapped back to x_bar = x / sqrt(gamma), where data of a
  single point gives a straight path. Only the states with sigma <= sigma_max (EDM's range)
  count; the first ones of the cosine schedule lie at sigma ~ 1e4.

  Args:
    path: float [N, S + 1, ...]: N paths of S + 1 states (`samplers.sample(keep_path=True)`,
      batch first).
    gammas: float [S + 1], the noise level of each state (`samplers.path_gammas`).
    sigma_max: the largest sigma kept.

  Returns:
    {'curvature': mean over paths of sum_i |T_i - T_(i-1)| / length (per unit of x_bar),
     'turning': mean total turning angle in radians, sum_i angle(d_(i-1), d_i)}; with
    d_i = x_bar_(i+1) - x_bar_i and T_i = d_i / |d_i|.
  """
  gammas = np.asarray(gammas, np.float64)
  sigmas = np.sqrt((1 - gammas) / gammas)
  keep = sigmas <= sigma_max
  if keep.sum() < 3:
    raise ValueError(f'Only {keep.sum()} states with sigma <= {sigma_max}: the curvature needs '
                     'at least 3 (more sampling steps).')
  path = np.asarray(path, np.float64)
  x_bar = path.reshape(path.shape[0], path.shape[1], -1)[:, keep] / np.sqrt(gammas[keep])[
      None, :, None]
  steps = np.diff(x_bar, axis=1)  # [N, K - 1, D]
  lengths = np.linalg.norm(steps, axis=-1)  # [N, K - 1]
  tangents = steps / np.maximum(lengths, 1e-12)[..., None]
  change = np.linalg.norm(np.diff(tangents, axis=1), axis=-1)  # [N, K - 2]
  cosines = np.clip(np.sum(tangents[:, 1:] * tangents[:, :-1], axis=-1), -1.0, 1.0)
  return {'curvature': float(np.mean(change.sum(axis=1) / np.maximum(lengths.sum(axis=1),
                                                                     1e-12))),
          'turning': float(np.mean(np.arccos(cosines).sum(axis=1)))}


def latent_usage(codes: np.ndarray, modes: np.ndarray, codebook_size: int,
                 num_modes: int) -> dict[str, float]:
  """How DisCo-Diff's extracted codes int [n, m] use the codebook and relate to the true
  mixture component int [n] of each point (averaged over the m latents).

  Returns {'codes_used': codes holding >= 1% of the points, 'code_perplexity': exp of the
  entropy of the code frequencies (k when all are equally used), 'mode_purity': the share of
  points whose code is the most common code of their true mode (1: every mode has one code),
  'code_purity': the share whose true mode is the most common mode of their code (1: every
  code holds one mode), 'mode_information': mutual information of code and mode over
  log(num_modes) (1: the code tells the mode)}.
  """
  codes, modes = np.asarray(codes).reshape(len(modes), -1), np.asarray(modes)
  rows = []
  for latent in codes.T:
    joint = np.zeros((num_modes, codebook_size))
    np.add.at(joint, (modes, latent), 1.0)
    joint /= joint.sum()
    code_p, mode_p = joint.sum(axis=0), joint.sum(axis=1)
    entropy = -np.sum(code_p[code_p > 0] * np.log(code_p[code_p > 0]))
    nonzero = joint > 0
    information = np.sum(joint[nonzero] * np.log(
        joint[nonzero] / np.outer(mode_p, code_p)[nonzero]))
    rows.append({'codes_used': float(np.sum(code_p >= 0.01)),
                 'code_perplexity': float(np.exp(entropy)),
                 'mode_purity': float(joint.max(axis=1).sum()),
                 'code_purity': float(joint.max(axis=0).sum()),
                 'mode_information': float(information / np.log(num_modes))})
  return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def code_frequency_tv(codes_a: np.ndarray, codes_b: np.ndarray, codebook_size: int) -> float:
  """Total-variation distance between the code frequencies of two sets int [n, m] (per
  latent, averaged over the m latents): how well the prior's draws match the extracted codes."""
  codes_a, codes_b = np.asarray(codes_a), np.asarray(codes_b)
  distances = []
  for a, b in zip(codes_a.T, codes_b.T):
    p = np.bincount(a, minlength=codebook_size) / len(a)
    q = np.bincount(b, minlength=codebook_size) / len(b)
    distances.append(0.5 * np.abs(p - q).sum())
  return float(np.mean(distances))
