"""The points task (DisCo-Diff's toy): the grid, resumable data, W2 and the other metrics, the
MLPs, and the sample and eval modes of a tiny trained Bit Diffusion model."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_diffusion import methods
from bit_diffusion import tasks
from bit_diffusion import train_loop
from bit_diffusion.points import data as data_lib
from bit_diffusion.points import evaluate as points_evaluate
from bit_diffusion.points import metrics
from configs import tiny
from configs import toy


def test_grid_round_trip_and_resolution():
  grid = data_lib.Grid(low=-4.0, high=4.0, num_bits=8)
  assert grid.cell == pytest.approx(1 / 32)
  values = np.arange(256)
  np.testing.assert_array_equal(grid.quantise(grid.decode(values)), values)  # Centres round trip.
  points = np.random.default_rng(0).uniform(-4, 4, (1000, 2))
  error = grid.decode(grid.quantise(points)) - points
  assert np.abs(error).max() <= grid.cell / 2 + 1e-12
  np.testing.assert_array_equal(grid.quantise(np.array([[-9.0, 9.0]])), [[0, 255]])  # Clipped.
  with pytest.raises(ValueError, match='must exceed'):
    data_lib.Grid(low=1.0, high=1.0, num_bits=8)


def test_eight_gaussians_have_the_papers_shape():
  config = toy.get_config()
  points, modes = data_lib.draw_points(np.random.default_rng(0), 40_000, config.data)
  means = data_lib.mode_means(8, 3.0)
  np.testing.assert_allclose(np.linalg.norm(means, axis=1), 3.0)
  offsets = points - means[modes]
  assert np.std(offsets) == pytest.approx(0.2, rel=0.02)
  assert np.bincount(modes).min() > 4500  # Uniform over the 8 modes.


def test_batches_are_a_pure_function_of_seed_and_step():
  data = toy.get_config().data
  straight = data_lib.PointsIterator(data, global_batch_size=8, seed=3)
  batches = [next(straight)['points'] for _ in range(3)]
  resumed = data_lib.PointsIterator(data, global_batch_size=8, seed=3, start_step=2)
  np.testing.assert_array_equal(next(resumed)['points'], batches[2])
  halves = [data_lib.PointsIterator(data, global_batch_size=8, seed=3, process_index=p,
                                    process_count=2).batch_at(1)['points'] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), batches[1])
  other_seed = data_lib.PointsIterator(data, global_batch_size=8, seed=4).batch_at(0)['points']
  assert not np.array_equal(other_seed, batches[0])
  held_out, _ = data_lib.held_out(3, 0, 8, data)
  assert not np.array_equal(held_out, batches[0])  # Its own stream.
  assert batches[0].dtype == np.int32 and batches[0].min() >= 0 and batches[0].max() < 256


def test_w2_of_a_shifted_set_is_the_shift():
  points = np.random.default_rng(0).normal(size=(300, 2))
  shift = np.array([0.3, -0.4])
  assert metrics.wasserstein2(points, points + shift) == pytest.approx(0.5, abs=1e-9)
  assert metrics.wasserstein2(points, points[::-1]) == pytest.approx(0.0, abs=1e-12)
  # Two points each: the optimal matching pairs (0, 0)-(0, 1) and (5, 0)-(5, 1), not across.
  assert metrics.wasserstein2(np.array([[0.0, 0], [5, 0]]),
                              np.array([[5.0, 1], [0, 1]])) == pytest.approx(1.0)
  with pytest.raises(ValueError, match='same shape'):
    metrics.wasserstein2(points, points[:10])


def test_mode_report_tells_weights_from_shapes():
  config = toy.get_config()
  means = data_lib.mode_means(8, 3.0)
  rng = np.random.default_rng(0)
  reference, _ = data_lib.draw_points(rng, 4000, config.data)
  same, _ = data_lib.draw_points(rng, 4000, config.data)
  one_mode = means[np.zeros(4000, int)] + 0.2 * rng.standard_normal((4000, 2))
  fair, collapsed = (metrics.mode_report(p, reference, means) for p in (same, one_mode))
  assert fair['mode_tv'] < 0.03 and collapsed['mode_tv'] == pytest.approx(7 / 8, abs=0.02)
  assert fair['within_w2'] < 0.1 and collapsed['within_w2'] < 0.1  # The shape is right.
  wide = means[rng.integers(0, 8, 4000)] + 0.6 * rng.standard_normal((4000, 2))
  assert metrics.mode_report(wide, reference, means)['within_w2'] > 0.3
  assert metrics.off_mode_fraction(same, means, 0.2) < 0.002
  assert metrics.off_mode_fraction(means[:1] + 1.5, means, 0.2) == 1.0


def test_curvature_of_straight_and_bent_paths():
  gammas = np.array([0.5, 0.6, 0.7, 0.8, 0.9])  # sigma <= 1: all kept.
  scale = np.sqrt(gammas)[None, :, None]
  straight = np.linspace(0, 1, 5)[None, :, None] * np.array([1.0, 2.0])  # In x_bar.
  result = metrics.path_curvature(straight * scale, gammas)
  assert result['curvature'] == pytest.approx(0.0, abs=1e-9)
  assert result['turning'] == pytest.approx(0.0, abs=1e-6)
  corner = np.array([[[0, 0], [1, 0], [2, 0], [2, 1], [2, 2]]], float)  # One right angle.
  result = metrics.path_curvature(corner * scale, gammas)
  assert result['turning'] == pytest.approx(np.pi / 2)
  assert result['curvature'] == pytest.approx(np.sqrt(2) / 4)  # |T2 - T1| over length 4.
  with pytest.raises(ValueError, match='at least 3'):
    metrics.path_curvature(corner * scale, np.array([1e-9, 1e-9, 1e-9, 0.8, 0.9]))


def test_latent_usage_and_prior_tv():
  modes = np.repeat(np.arange(8), 10)
  perfect = metrics.latent_usage((7 - modes)[:, None], modes, 8, 8)
  assert perfect == pytest.approx({'codes_used': 8, 'code_perplexity': 8, 'mode_purity': 1,
                                   'code_purity': 1, 'mode_information': 1})
  one_code = metrics.latent_usage(np.zeros((80, 1), int), modes, 8, 8)
  assert one_code['codes_used'] == 1 and one_code['mode_information'] == pytest.approx(0)
  assert one_code['mode_purity'] == 1 and one_code['code_purity'] == pytest.approx(1 / 8)
  assert metrics.code_frequency_tv(np.zeros((4, 1), int), np.ones((4, 1), int), 8) == 1.0


def test_mlp_denoiser_and_encoder_shapes():
  task = tasks.create(tiny.tiny_toy(toy))
  rng = jax.random.PRNGKey(0)
  plain = task.create_network('denoiser', in_channels=32, out_channels=16, rng=rng)
  x, gamma = jnp.ones((3, 32)), jnp.array([0.1, 0.5, 0.9])
  assert plain(x, gamma, None).shape == (3, 16)
  conditioned = task.create_network('denoiser', in_channels=32, out_channels=16,
                                    latent_shape=(2, 4), rng=rng)
  context = conditioned.encode_condition((None, jnp.ones((3, 2, 4))))
  assert context.shape == (3, 16)
  with pytest.raises(ValueError, match='encoder_width'):
    task.create_network('latent_encoder', in_channels=16, num_latents=2, codebook_size=5,
                        rng=rng)
  with pytest.raises(ValueError, match="no 'autoregressive' network"):
    task.create_network('autoregressive', rng=rng)


@pytest.fixture(scope='module')
def toy_workdir(tmp_path_factory):
  """A tiny Bit Diffusion run of 4 steps on the points task."""
  workdir = str(tmp_path_factory.mktemp('toy'))
  train_loop.train_and_evaluate(tiny.tiny_toy(toy), workdir)
  return workdir


def test_training_writes_a_scatter_preview(toy_workdir):
  assert os.path.exists(os.path.join(toy_workdir, 'samples', 'points_00000004.png'))


def test_sample_mode_writes_points(toy_workdir):
  path = points_evaluate.sample_from_checkpoint(tiny.tiny_toy(toy), toy_workdir)
  assert os.path.basename(path) == 'points_4_dpm2m4_n12_seed0.npz'
  with np.load(path) as data:
    values, points = data['values'], data['points']
  assert values.shape == (12, 2) and values.min() >= 0 and values.max() < 256
  np.testing.assert_allclose(points, -4 + (values + 0.5) / 32)
  assert os.path.exists(path[:-4] + '.png')


def test_eval_mode_scores_every_setting(toy_workdir):
  results = points_evaluate.evaluate_checkpoint(tiny.tiny_toy(toy), toy_workdir)
  assert [row['setting'] for row in results['rows']] == [
      'data (floor)', 'ddpm 4 steps', 'dpm2m 4 steps']
  floor, ddpm, dpm = results['rows']
  assert 0 < floor['w2'] < dpm['w2']  # Four steps of training: far from the data.
  assert 'curvature' in dpm and 'curvature' not in ddpm  # Deterministic samplers only.
  with open(os.path.join(toy_workdir, 'eval', 'points_4.json')) as f:
    assert json.load(f) == results
  assert methods.create(tiny.tiny_toy(toy)).metric_names == ('loss', 'x0_mse', 'bit_error')
