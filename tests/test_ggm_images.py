"""The Glauber Generative Model on images (digits as tokens): the tiny config trained through the
engine, sampled, infilled and scored with the digits metrics as Bit Diffusion is; a resumed run
bit-identical to a straight one; the network on images of any shape. Its config errors are cases
of tests/test_bad_inputs.py; the math's own are in tests/test_ggm.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_diffusion import engine
from bit_diffusion import evaluate
from bit_diffusion import image_infill
from bit_diffusion import input_pipeline
from bit_diffusion import methods
from bit_diffusion import tasks
from bit_diffusion import train_loop
from configs import tiny
from tests import recording


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory, digits_cache):
  """The tiny digits GGM trained 4 steps straight through (checkpoints at 2 and 4); its eval
  cache holds the run's trained digits classifier (tests/conftest.py)."""
  tmp_path = tmp_path_factory.mktemp('ggm_digits')
  config = tiny.tiny_digits_ggm(**{
      'eval.cache_dir': digits_cache(), 'eval.num_samples': 16,
      'eval.infill_images': 8, 'eval.num_batches': 1})
  workdir = str(tmp_path / 'run')
  state, losses = recording.train_recording_losses(config, workdir)
  return config, workdir, state, losses


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_resumed_ggm_run_equals_straight_run(straight_run, tmp_path):
  """2 steps, stop, resume to 4: bit-identical parameters, EMA and optimizer state to the
  straight run's (GGM's loss draws its steps, contexts and labels from the step's key)."""
  _, _, straight, _ = straight_run
  first = train_loop.train_and_evaluate(tiny.tiny_digits_ggm(**{'training.num_steps': 2}),
                                        str(tmp_path))
  assert int(first.step) == 2
  assert not all(np.array_equal(a, b) for a, b in zip(_leaves(first.params),
                                                      _leaves(straight.params)))
  resumed = train_loop.train_and_evaluate(tiny.tiny_digits_ggm(), str(tmp_path))
  assert int(resumed.step) == 4
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  for a, b in zip(_leaves(straight), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_tiny_digits_ggm_trains_samples_infills_and_scores(straight_run, tmp_path):
  config, workdir, state, losses = straight_run
  assert int(state.step) == 4 and len(losses) == 2 and np.all(np.isfinite(losses))
  # The classifier starts at D = 1/2 everywhere (zero output layer): the loss is log 2.
  assert abs(losses[0] - np.log(2)) < 0.05, losses
  assert os.path.isfile(os.path.join(workdir, 'samples', 'grid_00000004.png'))  # The preview.

  path = evaluate.sample_from_checkpoint(config, workdir)
  assert os.path.basename(path) == 'samples_4_ggm_k1_n12_seed0.npz'
  with np.load(path) as data:
    images, labels = data['images'], data['labels']
  assert images.shape == (12, 8, 8, 1) and os.path.isfile(path[:-4] + '.png')
  # 17 values (0..16, data.display_max): never the values 17..31 that 5 bits could spell.
  assert images.min() >= 0 and images.max() <= 16 and len(np.unique(images)) > 2
  np.testing.assert_array_equal(labels, np.arange(12) % 10)

  # Infilling through the same file interface as Bit Diffusion: known pixels are kept.
  source, _ = input_pipeline.create_source(config.data)
  batch = source.get(np.arange(3))
  originals = batch['images'].astype(np.int32)  # [3, 8, 8, 1]
  mask = image_infill.lower_half_unknown(originals.shape)[..., 0]  # [3, 8, 8]: rows 0-3 known.
  infill_file = str(tmp_path / 'digits.npz')
  np.savez(infill_file, images=originals[..., 0], mask=mask, labels=batch['labels'])
  written = evaluate.infill_from_file(config, workdir, infill_file)
  assert os.path.basename(written) == 'digits_4_ggm_k1.npz'
  with np.load(written) as data:
    filled = data['images']
  np.testing.assert_array_equal(filled[:, :4], originals[:, :4])
  assert filled.max() <= 16 and not np.array_equal(filled[:, 4:], originals[:, 4:])

  # --mode=eval: the method's loss on fixed noise, the digits metrics, the infill agreement.
  results = evaluate.evaluate_checkpoint(config, workdir)
  assert abs(results['eval/loss'] - np.log(2)) < 0.1 and 0 <= results['eval/accuracy'] <= 1
  assert results['eval/num_samples'] == 16 and results['eval/positions_per_call'] == 1
  for name in ('fid', 'is', 'precision', 'recall'):
    assert np.isfinite(results[f'eval/{name}']) and np.isfinite(results[f'eval/{name}_floor'])
  assert results['eval/fid'] > results['eval/fid_floor']  # Four training steps make noise.
  assert {k.split('/')[-1] for k in results if 'infill' in k} == {
      'infill', 'original', 'other_lower_half'}


def test_glauber_network_reads_images_of_any_shape_as_tokens():
  """CIFAR's 32x32x3 is 3,072 tokens over 256 values (built as shapes only); a class-conditional
  network's logits depend on the label and it refuses to run without one."""
  config = tiny.tiny_digits_ggm(**{
      'data.image_size': 32, 'data.channels': 3, 'data.num_bits': 8, 'data.display_max': 0,
      'data.class_conditional': False})
  method = methods.create(config)
  assert (method.process.length, method.process.vocab_size) == (3072, 256)
  graphdef, params = engine.abstract_network(method)
  assert params['decoder']['pos_embedding'].shape == (1, 3072, 32)
  assert params['token_embedding']['embedding'].shape == (257, 32)  # + phi.
  assert 'label_embedding' not in params
  batch = {'images': jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.uint8),
           'labels': jax.ShapeDtypeStruct((2,), jnp.int32)}
  loss = jax.eval_shape(lambda p, b: method.loss(graphdef, p, b, jax.random.key(0))[0],
                        params, batch)
  assert loss.shape == ()

  method = methods.create(tiny.tiny_digits_ggm())
  model = method.create_network(jax.random.key(1))
  kernel = model.logits_out.kernel
  kernel.value = jax.random.normal(jax.random.key(2), kernel.value.shape)
  tokens = jnp.zeros((2, 64), jnp.int32).at[:, 10].set(17)  # phi = 17 at position 10.
  time = jnp.full((2,), 0.5)
  logits = model(tokens, time, jnp.array([3, 7]))
  assert logits.shape == (2, 64, 17)
  assert not np.allclose(logits[0], logits[1])  # Same tokens, different labels.
  with pytest.raises(ValueError, match='num_classes=10; it needs labels'):
    model(tokens, time)


def test_infill_file_values_outside_the_vocabulary_are_refused(tmp_path):
  """Known values above data.display_max (16: GGM's 17 levels) are refused as the training data
  is (the other GGM errors on images: tests/test_bad_inputs.py)."""
  path = str(tmp_path / 'known.npz')
  np.savez(path, images=np.full((2, 8, 8), 17), mask=np.ones((2, 8, 8), bool),
           labels=np.zeros(2, np.int32))
  with pytest.raises(ValueError, match=r"outside the model's \[0, 16\]"):
    image_infill.read_known(path, tasks.create(tiny.tiny_digits_ggm()))
