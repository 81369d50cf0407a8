"""The Glauber Generative Model method on the text task: a few training steps of the tiny
config through the engine, sampling and infilling from the checkpoint, and its errors (the
math's own errors, such as a schedule that never reaches noise: tests/test_ggm.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_diffusion import engine
from bit_diffusion import generation
from bit_diffusion import methods
from bit_diffusion import tasks
from bit_diffusion.text import evaluate
from configs import shapes_captioning
from configs import text_ggm
from configs import tiny
from tests import recording
from tests import test_text_task


def test_tiny_text_ggm_trains_samples_and_infills(tmp_path):
  corpus = test_text_task.write_corpus(tmp_path / 'sentences.txt')
  config = test_text_task.make_config(text_ggm, corpus, tmp_path / 'cache', **{
      'training.num_steps': 4, 'training.log_every': 2, 'training.checkpoint_every': 4})
  workdir = str(tmp_path / 'run')
  state, losses = recording.train_recording_losses(config, workdir)
  assert int(state.step) == 4 and len(losses) == 2 and np.all(np.isfinite(losses))
  # The classifier starts at D = 1/2 everywhere (zero output layer): the loss is log 2.
  assert abs(losses[0] - np.log(2)) < 0.05, losses
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['4']
  with open(os.path.join(workdir, 'samples', 'text_00000004.txt'), encoding='utf-8') as f:
    assert [len(line) for line in f.read().splitlines()] == [16] * 4  # The final preview.

  model = generation.load(config, workdir)
  assert model.method.process.num_steps == 2 * 16
  rng = engine.seed_key(config.seed, 'sample')
  samples = np.asarray(model.make_sample_fn()(model.params, rng, jnp.zeros((5,), jnp.int32)))
  assert samples.shape == (5, 16) and samples.min() >= 0 and samples.max() < 27
  windows = model.task.windows('test')[:5]
  mask = np.zeros(windows.shape, bool)
  mask[:, :8] = True
  filled = np.asarray(model.make_sample_fn(infill=True)(
      model.params, rng, (jnp.zeros((5,), jnp.int32), jnp.asarray(windows), jnp.asarray(mask))))
  np.testing.assert_array_equal(filled[:, :8], windows[:, :8])
  faster = model.make_sample_fn(positions_per_call=4)(model.params, rng,
                                                      jnp.zeros((5,), jnp.int32))
  assert faster.shape == (5, 16)
  # The sample and eval modes of the text task.
  path = evaluate.sample_from_checkpoint(config, workdir)
  assert os.path.basename(path) == 'samples_4_ggm_k1_n6_seed0.txt'
  output = evaluate.evaluate_checkpoint(config, workdir)
  assert [r['setting'] for r in output['rows']][2:] == ['ggm_k1']
  assert [r['span'] for r in output['infill']] == [1, 4]


def test_ggm_bad_inputs_get_one_clear_error():
  with pytest.raises(ValueError, match="Unknown GGM schedule 'none'"):
    methods.create(tiny.tiny_text(text_ggm, **{'ggm.schedule': 'none'}))
  method = methods.create(tiny.tiny_text(text_ggm, **{'ggm.positions_per_call': 3}))
  with pytest.raises(ValueError, match='positions_per_call=3 must be in'):
    method.check(1)
  captions = tasks.create(shapes_captioning.get_config())
  with pytest.raises(ValueError, match="'ggm' on captions is not built yet"):
    captions.create_network('glauber', rng=jax.random.key(0))
