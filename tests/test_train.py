"""Training end to end on tiny configs: resume equals straight-through, the loss falls, modes."""

import json
import os

import jax
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
