"""Training end to end on tiny configs: resume equals straight-through, the loss falls, modes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from bit_diffusion import evaluate
from bit_diffusion import input_pipeline
from bit_diffusion import train
from tests import tiny_configs


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """A tiny digits run of 4 steps straight through; reused by the tests below."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  state = train.train_and_evaluate(tiny_configs.tiny_digits(), workdir)
  return workdir, state


def test_resumed_run_equals_straight_run(trained_workdir, tmp_path):
  _, straight = trained_workdir
  workdir = str(tmp_path)
  first = train.train_and_evaluate(tiny_configs.tiny_digits(**{'training.num_steps': 2}), workdir)
  assert int(first.step) == 2
  resumed = train.train_and_evaluate(tiny_configs.tiny_digits(), workdir)
  assert int(resumed.step) == 4
  for a, b in zip(_params(straight), _params(resumed)):
    np.testing.assert_array_equal(a, b)  # Bit-identical: same keys, same batches.


def test_workdir_has_checkpoints_metrics_and_grid(trained_workdir):
  workdir, _ = trained_workdir
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
  grid = Image.open(os.path.join(workdir, 'samples', 'grid_00000004.png'))
  assert grid.size[0] > 32 and grid.mode == 'L'


def test_sample_mode_writes_integer_images(trained_workdir):
  workdir, _ = trained_workdir
  config = tiny_configs.tiny_digits(**{'sampling.labels': '3,7', 'sampling.td': 1.0})
  path = evaluate.sample_from_checkpoint(config, workdir)
  assert os.path.basename(path) == 'samples_4_ddim4_td1.npz'
  with np.load(path) as data:
    images, labels = data['images'], data['labels']
  assert images.shape == (12, 8, 8, 1) and images.dtype == np.int32
  assert images.min() >= 0 and images.max() < 32
  np.testing.assert_array_equal(labels[:4], [3, 7, 3, 7])
  assert os.path.exists(path[:-4] + '.png')


def test_eval_mode_writes_json(trained_workdir):
  workdir, _ = trained_workdir
  results = evaluate.evaluate_checkpoint(tiny_configs.tiny_digits(), workdir)
  with open(os.path.join(workdir, 'eval', 'metrics_4.json')) as f:
    assert json.load(f) == results
  assert results['step'] == 4 and 0 < results['eval/loss'] < 2


def test_checkpoint_from_another_config_is_refused(trained_workdir):
  workdir, _ = trained_workdir
  other = tiny_configs.tiny_digits(**{'model.base_channels': 32, 'bits.encoding': 'gray'})
  with pytest.raises(ValueError, match=r'different model config(.|\n)*model.base_channels: '
                                       r'checkpoint has 16, config has 32'):
    evaluate.sample_from_checkpoint(other, workdir)


def test_loss_falls_on_a_small_dataset(tmp_path):
  config = tiny_configs.tiny_digits(**{
      'training.num_steps': 60, 'training.log_every': 20, 'training.checkpoint_every': 60,
      'optimizer.warmup_steps': 10, 'training.batch_size': 32})
  _, losses = tiny_configs.train_recording_losses(config, str(tmp_path))
  assert len(losses) == 3
  assert losses[-1] < 0.6 * losses[0], losses


def test_cifar10_config_trains_two_steps_under_mock_data(tmp_path, monkeypatch):
  # Under mock_data the dataset counts as not prepared; the mocked "download" makes no request,
  # so only the network probe is told that the host is reachable.
  monkeypatch.setattr(input_pipeline, '_unreachable', lambda host: None)
  with tfds.testing.mock_data(num_examples=16):
    state = train.train_and_evaluate(tiny_configs.tiny_cifar10(), str(tmp_path))
  assert int(state.step) == 2
  assert os.path.exists(os.path.join(tmp_path, 'samples', 'grid_00000002.png'))
  assert sorted(os.listdir(os.path.join(tmp_path, 'checkpoints'))) == ['2']


def test_bad_configs_fail_before_compiling(tmp_path):
  with pytest.raises(ValueError, match='does not divide over 2 devices'):
    train.check_config(tiny_configs.tiny_digits(**{'training.batch_size': 15}), 2, 1)
  with pytest.raises(ValueError, match='label_dropout'):
    train.check_config(tiny_configs.tiny_digits(**{'sampling.guidance': 2.0,
                                                   'diffusion.label_dropout': 0.0}), 1, 1)
  not_a_dir = tmp_path / 'a_file'
  not_a_dir.write_text('')  # Unwritable for root too: a directory cannot be made inside a file.
  with pytest.raises(PermissionError, match='not writable'):
    train.train_and_evaluate(tiny_configs.tiny_digits(), str(not_a_dir / 'run'))


def test_microbatch_config_errors():
  config = lambda **o: tiny_configs.tiny_digits(**o)
  with pytest.raises(ValueError, match='must divide'):
    train.check_config(config(**{'training.microbatch_size': 5}), 1, 1)
  with pytest.raises(ValueError, match='over 4 devices'):
    train.check_config(config(**{'training.microbatch_size': 2}), 4, 1)
  with pytest.raises(ValueError, match='self-conditioning share 1/2'):
    train.check_config(config(**{'training.microbatch_size': 4}), 4, 1)  # 1 example per device.
  train.check_config(config(**{'training.microbatch_size': 8}), 4, 1)  # 2 per device: fine.


class _DeterministicLossTrainer(train.Trainer):
  """compute_loss without randomness, so that microbatches must reproduce the batch exactly."""

  def compute_loss(self, params, batch, rng):
    del rng
    bits, _ = self.encode_batch(batch)
    denoise = train.models.make_denoise_fn(self.graphdef, params)
    gamma = jnp.linspace(0.2, 0.8, bits.shape[0])
    output = denoise(0.7 * bits, gamma, jnp.zeros_like(bits), None, None)
    per_example = jnp.mean(jnp.square(output - bits).reshape(bits.shape[0], -1), axis=-1)
    return jnp.mean(per_example), train.diffusion_lib.LossTerms(per_example, per_example,
                                                                 per_example)


def test_microbatches_give_the_batch_gradient():
  """Gradient accumulation over 4 microbatches = one pass over the batch (float32 rounding)."""
  config = tiny_configs.tiny_digits(**{'model.attention_resolutions': (),
                                       'model.channel_multipliers': (1,)})
  whole = _DeterministicLossTrainer(config)
  params = whole.init_state(jax.random.PRNGKey(0)).params
  rng = np.random.default_rng(0)
  batch = whole.global_batch({
      'images': rng.integers(0, 17, (16, 8, 8, 1), dtype=np.int32),
      'labels': rng.integers(0, 10, (16,), dtype=np.int32)})
  config.training.microbatch_size = 4
  split = _DeterministicLossTrainer(config)
  key = jax.random.PRNGKey(1)
  (loss, terms), grads = jax.jit(whole._loss_and_grads)(params, batch, key)
  (loss_mb, terms_mb), grads_mb = jax.jit(split._loss_and_grads)(params, batch, key)
  np.testing.assert_allclose(loss_mb, loss, rtol=1e-5)
  np.testing.assert_allclose(np.sort(terms_mb.loss), np.sort(terms.loss), rtol=1e-5)
  for g_mb, g in zip(jax.tree.leaves(grads_mb), jax.tree.leaves(grads)):
    np.testing.assert_allclose(g_mb, g, rtol=1e-4, atol=1e-6)
