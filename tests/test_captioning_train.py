"""Captioning end to end on the embedded scenes: training, sample (COCO JSON) and eval modes."""

import json
import os

import pytest

from bit_diffusion.captioning import evaluate
from bit_diffusion.captioning import scoring
from bit_diffusion.captioning import trainer as trainer_lib
from configs import shapes_captioning
from configs import shapes_captioning_ar
from tests import tiny_configs


def tiny(config_module, **overrides):
  """A shapes captioning config with 16x16 images, a 1-layer encoder and decoder of width 32."""
  config = config_module.get_config()
  config.data.image_size = 16
  config.model.patch_size = 8
  config.data.prefetch = 0
  for field, value in dict(encoder_width=32, encoder_depth=1, encoder_mlp_dim=64,
                           encoder_heads=2, width=32, depth=1, mlp_dim=64, num_heads=2).items():
    config.model[field] = value
  config.training.batch_size = 16
  config.training.num_steps = 40
  config.training.log_every = 20
  config.training.checkpoint_every = 40
  config.training.sample_every = 0
  config.training.num_grid_samples = 4
  config.training.compilation_cache = False  # The tests' own cache is set in conftest.
  config.optimizer.warmup_steps = 5
  config.sampling.steps = 3
  config.sampling.num_samples = 6
  config.sampling.batch_size = 4
  config.eval.num_images = 6
  config.eval.sweep_steps = (2,)
  config.eval.sweep_td = (0.0, 1.0)
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


@pytest.fixture(scope='module')
def diffusion_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('caption_diffusion'))
  config = tiny(shapes_captioning)
  state, losses = tiny_configs.train_recording_losses(
      config, workdir, trainer_lib.trainer_class(config))
  return config, workdir, state, losses


def test_diffusion_captioner_trains_on_shapes(diffusion_run):
  config, workdir, state, losses = diffusion_run
  assert int(state.step) == 40
  assert len(losses) == 2 and losses[1] < 0.8 * losses[0], losses
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['40']
  with open(os.path.join(workdir, 'samples', 'captions_00000040.txt')) as f:
    assert len(f.read().splitlines()) == 4  # prediction | reference, per held-out image.


def test_sample_mode_writes_coco_results(diffusion_run):
  config, workdir, _, _ = diffusion_run
  path = evaluate.sample_from_checkpoint(config, workdir)
  assert os.path.basename(path) == 'results_40_ddim3_td2.json'
  with open(path) as f:
    results = json.load(f)
  assert len(results) == 6
  assert all(isinstance(r['image_id'], int) and isinstance(r['caption'], str) for r in results)


def test_eval_mode_sweeps_steps_and_td(diffusion_run):
  config, workdir, _, _ = diffusion_run
  output = evaluate.evaluate_checkpoint(config, workdir)
  assert [r['setting'] for r in output['results']] == ['ddim2_td0', 'ddim2_td1']
  for row in output['results']:
    assert 0 <= row['bleu4'] <= 1 and 0 <= row['exact_match'] <= 1 and row['cider'] >= 0
  with open(os.path.join(workdir, 'eval', 'captions_40.json')) as f:
    assert json.load(f) == output
  with open(os.path.join(workdir, 'eval', 'captions_40.md')) as f:
    assert f.read().startswith('| setting | BLEU-4 |')


def test_autoregressive_baseline_trains_and_scores(tmp_path):
  config = tiny(shapes_captioning_ar, **{'training.num_steps': 4, 'training.log_every': 2,
                                         'training.checkpoint_every': 4})
  state, losses = tiny_configs.train_recording_losses(
      config, str(tmp_path), trainer_lib.trainer_class(config))
  assert int(state.step) == 4 and losses[-1] < losses[0]
  output = evaluate.evaluate_checkpoint(config, str(tmp_path))
  assert [r['setting'] for r in output['results']] == ['greedy']


def test_scores_of_perfect_and_wrong_captions():
  references = [['a red circle at the top', 'red circle top'], ['a blue square in the center']]
  perfect = scoring.score(['A red circle at the top.', 'a blue square in the center'], references)
  assert perfect['exact_match'] == 1.0 and perfect['bleu4'] > 0.99 and perfect['rouge_l'] > 0.99
  wrong = scoring.score(['', 'green'], references)
  assert wrong['exact_match'] == 0.0 and wrong['bleu4'] < 0.01
