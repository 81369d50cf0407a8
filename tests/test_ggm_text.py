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
from bit_diffusion.text import evaluate
from configs import text8_ggm
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


def test_text8_ggm_loads_its_corpus_trains_and_samples(tmp_path):
  """configs/text8_ggm.py with its own loading (data.name='files', text8's normalisation and
  90/5/5 split) on a small corpus written here (text8 itself is not on this machine), made
  tiny: 4 steps through the engine, then --mode=sample."""
  corpus = test_text_task.write_corpus(tmp_path / 'text8_like.txt', num_sentences=2000)
  config = tiny.tiny_text(text8_ggm, **{
      'data.path': corpus, 'eval.cache_dir': str(tmp_path / 'cache'),
      'training.num_steps': 4, 'training.log_every': 2, 'training.checkpoint_every': 4})
  assert (config.data.name, tuple(config.data.splits)) == ('files', (0.9, 0.05, 0.05))
  workdir = str(tmp_path / 'run')
  state, losses = recording.train_recording_losses(config, workdir)
  assert int(state.step) == 4 and abs(losses[0] - np.log(2)) < 0.05, losses
  path = evaluate.sample_from_checkpoint(config, workdir)
  assert os.path.basename(path) == 'samples_4_ggm_k1_n6_seed0.txt'
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  assert len(lines) == 6 and all(len(line) == 16 for line in lines)
  assert set(''.join(lines)) <= set('abcdefghijklmnopqrstuvwxyz ')  # text8's 27 symbols.


def test_text8_ggm_config_is_text8s_transformer_as_a_classifier():
  """The real config's sizes, as shapes only: text8.py's 12 x 768 Transformer with 27 + 1
  token embeddings in and 27 logits out (86.3M parameters; the denoiser's 86.2M), 4 sweeps of
  256 positions = 1,024 network calls per sample."""
  config = text8_ggm.get_config()
  method = methods.create(config)
  assert (method.process.length, method.process.vocab_size) == (256, 27)
  assert method.process.num_steps == 1024
  _, params = engine.abstract_network(method)
  assert params['token_embedding']['embedding'].shape == (28, 768)
  assert params['logits_out']['kernel'].shape == (768, 27)
  assert len(params['decoder']['blocks']) == 12
  assert sum(x.size for x in jax.tree.leaves(params)) == 86_279_451  # 86.3M.


def test_ggm_bad_inputs_get_one_clear_error():
  with pytest.raises(ValueError, match="Unknown GGM schedule 'none'"):
    methods.create(tiny.tiny_text(text_ggm, **{'ggm.schedule': 'none'}))
  method = methods.create(tiny.tiny_text(text_ggm, **{'ggm.positions_per_call': 3}))
  with pytest.raises(ValueError, match='positions_per_call=3 must be in'):
    method.check(1)
