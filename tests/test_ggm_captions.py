"""The Glauber Generative Model on captions (tokens given the image): the tiny shapes config
trained through the engine, its sample, eval and infill modes, and the classifier's use of the
image (encoded once per sampled batch, outside the heat-bath loop)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bit_diffusion import engine
from bit_diffusion import generation
from bit_diffusion import methods
from bit_diffusion import param_keys
from bit_diffusion.captioning import evaluate
from bit_diffusion.captioning import infill
from bit_diffusion.captioning import model as model_lib
from configs import coco_captioning_ggm
from configs import shapes_captioning_ggm
from configs import tiny
from tests import jitted
from tests import recording


@pytest.fixture(scope='module')
def ggm_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('caption_ggm'))
  config = tiny.tiny_captioning(shapes_captioning_ggm, **{
      'training.num_steps': 4, 'training.log_every': 2, 'training.checkpoint_every': 4})
  state, losses = recording.train_recording_losses(config, workdir)
  return config, workdir, state, losses


def test_caption_ggm_trains_samples_and_scores(ggm_run):
  config, workdir, state, losses = ggm_run
  assert int(state.step) == 4 and len(losses) == 2 and np.all(np.isfinite(losses))
  # The classifier starts at D = 1/2 everywhere (zero output layer): the loss is log 2.
  assert abs(losses[0] - np.log(2)) < 0.05, losses
  with open(os.path.join(workdir, 'samples', 'captions_00000004.txt')) as f:
    assert len(f.read().splitlines()) == 4  # prediction | reference, per held-out image.

  model = generation.load(config, workdir)
  assert model.method.process.num_steps == 20  # One sweep of the 20 caption positions.
  path = evaluate.sample_from_checkpoint(config, workdir)
  assert os.path.basename(path) == 'results_4_ggm_k1_n6_seed0.json'
  with open(path) as f:
    results = json.load(f)
  _, predictions, _ = evaluate.caption_source(model, model.task.eval_source(), 6,
                                              engine.seed_key(config.seed, 'sample'))
  assert [r['caption'] for r in results] == predictions

  output = evaluate.evaluate_checkpoint(config, workdir)
  assert [(r['setting'], r['steps']) for r in output['results']] == [('ggm_k1', 0)]
  assert output['infill_token_accuracy'] in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_caption_ggm_infilling_keeps_the_known_tokens(ggm_run):
  config, workdir, _, _ = ggm_run
  model = generation.load(config, workdir)
  batch = model.task.eval_source().get(np.arange(3))
  tokens = model.task.tokenizer.text_to_ids([refs[0] for refs in batch['captions']])
  mask = np.zeros(tokens.shape, bool)
  mask[:, :3] = True
  filled = infill.fill(model, batch['images'], tokens, mask, jax.random.key(0))
  np.testing.assert_array_equal(filled[:, :3], tokens[:, :3])
  assert filled.shape == tokens.shape and filled.max() < model.task.vocab_size


def _count_convolutions(jaxpr, in_loop=False, counts=None):
  """{False: ViT patch convolutions outside any loop (while, scan), True: inside one}."""
  counts = {False: 0, True: 0} if counts is None else counts
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      counts[in_loop] += 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          _count_convolutions(inner, in_loop or eqn.primitive.name in ('while', 'scan'),
                              counts)
  return counts


def test_caption_classifier_reads_the_image_encoded_once():
  config = tiny.tiny_captioning(shapes_captioning_ggm)
  method = methods.create(config)
  network = method.create_network(jax.random.key(0))
  assert isinstance(network, model_lib.GlauberCaptioner)
  kernel = network.logits_out.kernel  # Zero-initialised: give it weights so logits differ.
  kernel.value = jax.random.normal(jax.random.key(1), kernel.value.shape)
  images = jax.random.randint(jax.random.key(2), (2, 16, 16, 3), 0, 256)
  tokens = jnp.zeros((2, 20), jnp.int32).at[:, 5].set(network.phi)
  time = jnp.full((2,), 0.5)
  logits = jitted.module_call(network, tokens, time, images)
  assert logits.shape == (2, 20, method.task.vocab_size)
  assert not np.allclose(logits[0], logits[1])  # Same tokens, different images.
  np.testing.assert_allclose(jitted.module_call(network, tokens, time, images[::-1])[1],
                             logits[0], rtol=1e-5)

  graphdef, params = nnx.split(network, nnx.Param)
  sample_fn = method.make_sample_fn(graphdef)
  jaxpr = jax.make_jaxpr(sample_fn)(params, jax.random.key(3), images)
  assert _count_convolutions(jaxpr.jaxpr) == {False: 1, True: 0}


def test_coco_ggm_config_is_the_paper_captioner_as_a_classifier():
  """configs/coco_captioning_ggm.py: the ViT-B/16 encoder and the 6 x 512 decoder of
  configs/coco_captioning.py, 32,000 logits per position, 4 sweeps of 64 positions."""
  config = coco_captioning_ggm.get_config()
  assert config.method == 'ggm' and 'diffusion' not in config and 'sampler' not in config.sampling
  net = nnx.eval_shape(lambda: model_lib.GlauberCaptioner(  # Shapes only: nothing allocated.
      vocab_size=config.tokenizer.vocab_size, **model_lib.model_kwargs(config),
      rngs=param_keys.ParamKeys(0)))
  params = nnx.state(net, nnx.Param)
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert 85.5e6 < count(params['encoder']) < 86.5e6
  assert len(net.decoder.blocks) == 6 and net.decoder.pos_embedding.shape == (1, 64, 512)
  assert net.token_embedding.embedding.shape == (32_001, 512)  # + phi.
  assert net.logits_out.kernel.shape == (512, 32_000)
  assert (config.ggm.num_sweeps, config.ggm.positions_per_call) == (4, 1)
