"""DisCo-Diff on images: the U-Net reads its latents by cross-attention (and, optionally, a
pooled embedding), the convolutional encoder's shapes, one tiny digits training holding both
stages in one checkpoint, sampling through both (prior, then diffusion; also with fixed codes),
tools/disco_latents.py, and the bad inputs of the toy on images."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_diffusion import engine as engine_lib
from bit_diffusion import evaluate
from bit_diffusion import latent_unet
from bit_diffusion import methods
from bit_diffusion import train_loop
from bit_diffusion import unet
from configs import digits_uncond_disco
from configs import tiny
from tests import jitted
from tools import disco_latents


def _network(config):
  method = methods.create(config)
  return method, method.create_network(jax.random.PRNGKey(0))


@pytest.mark.parametrize('pooled', [False, True])
def test_the_unet_reads_its_latents(pooled):
  """Different latents give different outputs (cross-attention, and the pooled path); the
  cross-attention layers sit after the self-attention layers only."""
  config = tiny.tiny_digits_disco(**{'model.latent_pooled': pooled})
  _, network = _network(config)
  denoiser = network.denoiser
  assert isinstance(denoiser, latent_unet.LatentUNet)
  blocks = list(denoiser.unet.down) + list(denoiser.unet.up)
  assert [b.cross is not None for b in blocks] == [b.attn is not None for b in blocks]
  assert any(b.cross is not None for b in blocks)
  # The output conv starts at zero (every output 0): give it weights to see the latents.
  conv_out = denoiser.unet.conv_out
  conv_out.kernel[...] = jax.random.normal(jax.random.PRNGKey(1), conv_out.kernel.shape)
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 10))
  gamma, labels = jnp.full((3,), 0.5), jnp.array([1, 2, 3])
  outputs = [jitted.module_call(denoiser, x, gamma,
                                (labels, network.embed(jax.nn.one_hot(codes, 16))))
             for codes in (jnp.zeros((3, 2), jnp.int32), jnp.ones((3, 2), jnp.int32))]
  assert outputs[0].shape == (3, 8, 8, 5)
  assert float(jnp.abs(outputs[0] - outputs[1]).max()) > 1e-3
  null = jitted.module_call(denoiser, x, gamma, (labels, network.null_latents(3)))
  assert float(jnp.abs(null - outputs[0]).max()) > 1e-3


def test_plain_unet_has_no_latent_layers_and_the_encoder_shapes():
  _, plain = _network(tiny.tiny_digits())
  assert isinstance(plain, unet.UNet)
  assert all(b.cross is None for b in list(plain.down) + list(plain.up))
  config = tiny.tiny_digits_disco(digits_uncond_disco)  # No labels.
  method, network = _network(config)
  logits = jitted.module_call(network.encoder,
                              method.bits.encode(jnp.zeros((4, 8, 8, 1), jnp.int32)))
  assert logits.shape == (4, 2, 16) and logits.dtype == jnp.float32
  out = jitted.module_call(network.denoiser, jnp.zeros((4, 8, 8, 10)), jnp.full((4,), 0.3),
                           (None, network.null_latents(4)))
  assert out.shape == (4, 8, 8, 5)
  engine_lib.check_config(config, method, 1, 1)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """4 tiny steps of configs/digits_disco.py (steps 1-2 the first stage, 3-4 the prior's),
  checkpoints at 2 and 4."""
  workdir = str(tmp_path_factory.mktemp('digits_disco'))
  state = train_loop.train_and_evaluate(tiny.tiny_digits_disco(), workdir)
  return workdir, state


def test_one_checkpoint_holds_both_stages_and_samples_through_both(trained):
  workdir, state = trained
  assert int(state.step) == 4
  assert {'encoder', 'denoiser', 'prior', 'codebook', 'null_embedding'} <= set(state.params)
  path = evaluate.sample_from_checkpoint(tiny.tiny_digits_disco(), workdir)
  with np.load(path) as data:
    images = data['images']
  assert images.shape == (12, 8, 8, 1) and 0 <= images.min() and images.max() < 32


def test_the_latents_tool_reports_codes_grid_and_timing(trained):
  workdir, _ = trained
  result = disco_latents.run(tiny.tiny_digits_disco(), workdir, rows=3, columns=4,
                             time_steps=(2,), time_batch=8, time_repeats=1)
  codes = result['codes']
  assert codes['num_images'] == 1797
  assert [sum(h) for h in codes['histograms']] == [1797, 1797]
  assert sum(n for _, n in codes['tuple_histogram']) == 1797
  assert 1 <= codes['tuples_used'] <= 256 and 0 <= codes['prior_tv'] <= 1
  assert os.path.exists(result['grid'])
  assert set(result['timing']) == {'ddim2', 'prior'} and result['timing']['ddim2'] > 0


def test_sampling_refuses_a_checkpoint_without_its_prior(trained, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))  # Step 2: the first stage only.
  with pytest.raises(ValueError, match='holds no fitted latent prior'):
    evaluate.sample_from_checkpoint(tiny.tiny_digits_disco(), workdir)


@pytest.mark.parametrize('field', ['disco.num_latents', 'disco.codebook_size'])
def test_no_latents_or_no_codes_are_refused_on_images(field):
  with pytest.raises(ValueError, match="use config.method='bit_diffusion'"):
    methods.create(tiny.tiny_digits_disco(**{field: 0}))


def test_an_image_config_without_the_latent_fields_names_the_config_to_start_from():
  config = tiny.tiny_digits_disco()
  del config.model['latent_width']
  with pytest.raises(ValueError, match='lacks latent_width.*configs/digits_disco.py'):
    methods.create(config).create_network(jax.random.PRNGKey(0))
