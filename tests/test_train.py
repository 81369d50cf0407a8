"""Training end to end on tiny configs: resume equals straight-through, the loss falls, modes."""

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from PIL import Image

from bit_diffusion import checkpointing
from bit_diffusion import cpu
from bit_diffusion import distributed
from bit_diffusion import downloads
from bit_diffusion import engine as engine_lib
from bit_diffusion import evaluate
from bit_diffusion import generation
from bit_diffusion import image_infill
from bit_diffusion import input_pipeline
from bit_diffusion import methods
from bit_diffusion import tasks
from bit_diffusion import train_loop
from bit_diffusion.methods import bit_diffusion
from configs import tiny
from tests import recording
from tests import subprocesses

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """A tiny digits run of 4 steps straight through; reused by the tests below."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  state = train_loop.train_and_evaluate(tiny.tiny_digits(), workdir)
  return workdir, state


def test_resumed_run_equals_straight_run(trained_workdir, tmp_path):
  """A workdir holding the straight run's checkpoint of step 2 only (as a run stopped there
  leaves it) resumes to step 4 with the straight run's weights. A finished run extended:
  tests/test_ggm_images.py (the same train loop); killed or preempted runs:
  tests/test_preemption.py."""
  straight_workdir, straight = trained_workdir
  workdir = str(tmp_path / 'run')
  shutil.copytree(os.path.join(straight_workdir, 'checkpoints'),
                  os.path.join(workdir, 'checkpoints'))
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))
  resumed = train_loop.train_and_evaluate(tiny.tiny_digits(), workdir)
  assert int(resumed.step) == 4
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
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
  config = tiny.tiny_digits(**{'sampling.labels': '3,7', 'sampling.td': 1.0})
  path = evaluate.sample_from_checkpoint(config, workdir)
  assert os.path.basename(path) == 'samples_4_ddim4_td1_n12_seed0.npz'
  with np.load(path) as data:
    images, labels = data['images'], data['labels']
  assert images.shape == (12, 8, 8, 1) and images.dtype == np.int32
  assert images.min() >= 0 and images.max() < 32
  np.testing.assert_array_equal(labels[:4], [3, 7, 3, 7])
  assert os.path.exists(path[:-4] + '.png')


def test_sampling_again_never_overwrites(trained_workdir):
  workdir, _ = trained_workdir
  config = tiny.tiny_digits(**{'sampling.num_samples': 3, 'sampling.steps': 1})
  first = evaluate.sample_from_checkpoint(config, workdir)
  again = evaluate.sample_from_checkpoint(config, workdir)  # The same settings.
  fewer = evaluate.sample_from_checkpoint(
      tiny.tiny_digits(**{'sampling.num_samples': 2, 'sampling.steps': 1}), workdir)
  assert [os.path.basename(p) for p in (first, again, fewer)] == [
      'samples_4_ddim1_td0_n3_seed0.npz', 'samples_4_ddim1_td0_n3_seed0_2.npz',
      'samples_4_ddim1_td0_n2_seed0.npz']
  for path, count in ((first, 3), (again, 3), (fewer, 2)):
    with np.load(path) as data:
      assert len(data['images']) == count
    assert os.path.exists(path[:-4] + '.png')


def test_eval_mode_writes_json(trained_workdir):
  workdir, _ = trained_workdir
  results = evaluate.evaluate_checkpoint(tiny.tiny_digits(), workdir)
  with open(os.path.join(workdir, 'eval', 'metrics_4.json')) as f:
    assert json.load(f) == results
  assert results['step'] == 4
  assert {k for k in results if k != 'step'} == {'eval/loss', 'eval/x0_mse', 'eval/bit_error'}
  # Fixed noise and batches: the same checkpoint scores the same, so checkpoints compare.
  assert evaluate.evaluate_checkpoint(tiny.tiny_digits(), workdir) == results
  # sampling.use_ema=False scores the online weights (4 steps from the EMA's start: they differ).
  online = evaluate.evaluate_checkpoint(tiny.tiny_digits(**{'sampling.use_ema': False}), workdir)
  assert online['eval/loss'] != results['eval/loss']


def test_infill_mode_fills_only_the_unknown_pixels(trained_workdir, tmp_path):
  workdir, _ = trained_workdir
  source, _ = input_pipeline.create_source(tiny.tiny_digits().data)
  batch = source.get(np.arange(3))
  originals = batch['images'].astype(np.int32)  # [3, 8, 8, 1]
  mask = image_infill.lower_half_unknown(originals.shape)[..., 0]  # [3, 8, 8]: known rows 0-3.
  path = str(tmp_path / 'digits.npz')
  np.savez(path, images=originals[..., 0], mask=mask)
  with pytest.raises(ValueError, match="class-conditional model needs 'labels'"):
    evaluate.infill_from_file(tiny.tiny_digits(), workdir, path)
  np.savez(path, images=originals[..., 0], mask=mask, labels=batch['labels'])
  written = evaluate.infill_from_file(tiny.tiny_digits(), workdir, path)
  assert os.path.basename(written) == 'digits_4_ddim4_td0.npz'
  with np.load(written) as data:
    filled = data['images']
  np.testing.assert_array_equal(filled[:, :4], originals[:, :4])
  assert filled.min() >= 0 and filled.max() < 32
  assert not np.array_equal(filled[:, 4:], originals[:, 4:])  # Four steps of training: noise.
  np.savez(tmp_path / 'bad.npz', images=originals[:, :4, :, 0], mask=mask[:, :4],
           labels=batch['labels'])
  with pytest.raises(ValueError, match=r'do not match the model'):
    evaluate.infill_from_file(tiny.tiny_digits(), workdir, str(tmp_path / 'bad.npz'))
  np.savez(tmp_path / 'range.npz', images=originals[..., 0] + 40, mask=mask,
           labels=batch['labels'])
  with pytest.raises(ValueError, match=r'outside the model'):
    evaluate.infill_from_file(tiny.tiny_digits(), workdir, str(tmp_path / 'range.npz'))


def test_checkpoint_from_another_config_is_refused(trained_workdir):
  workdir, _ = trained_workdir
  other = tiny.tiny_digits(**{'model.base_channels': 32, 'bits.encoding': 'gray'})
  with pytest.raises(ValueError, match=r'different model config(.|\n)*model.base_channels: '
                                       r'checkpoint has 16, config has 32'):
    evaluate.sample_from_checkpoint(other, workdir)


def test_autoguidance_keeps_its_guide_and_samples_with_it(trained_workdir, tmp_path):
  """Training with a guide_fraction also saves the guide's step and keeps it beside the newest
  checkpoint (training.max_checkpoints=1) without changing the weights, with autoguidance or
  without (to sample with it later); `load` reads the guide's EMA weights; guided by the model
  itself (m + w (m - m) = m) the samples are the unguided ones bit for bit, guided by the
  step-1 checkpoint they are not."""
  guided = {'sampling.autoguidance': 1.0, 'sampling.guide_fraction': 0.25,  # Step 1 of 4.
            'training.max_checkpoints': 1}
  config = tiny.tiny_digits(**guided)
  workdir = str(tmp_path / 'run')
  state = train_loop.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1', '4']
  assert os.path.exists(os.path.join(workdir, 'samples', 'grid_00000004.png'))
  for a, b in zip(_params(trained_workdir[1]), _params(state)):
    np.testing.assert_array_equal(a, b)
  unguided_run = str(tmp_path / 'unguided')
  train_loop.train_and_evaluate(tiny.tiny_digits(**{**guided, 'sampling.autoguidance': 0.0}),
                                unguided_run)
  assert sorted(os.listdir(os.path.join(unguided_run, 'checkpoints'))) == ['1', '4']

  model = generation.load(config, workdir)
  assert model.step == 4
  engine = engine_lib.Engine(config, model.method)
  step_1, _ = engine.restore(checkpointing.create_manager(workdir, 1), step=1)
  for a, b in zip(_params(step_1.ema_params), _params(model.guide_params)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in  # The EMA, not the online weights.
             zip(_params(step_1.params), _params(model.guide_params)))

  # The sampler's paths (floats): the tiny model's integer samples are nearly all 0.
  labels, rng = jnp.arange(8) % 10, jax.random.PRNGKey(3)
  path_of = lambda fn, params: np.asarray(fn(params, rng, labels))
  unguided = path_of(model.make_sample_fn(autoguidance=0.0, trajectory=True), model.params)
  raw_fn = model.method.make_sample_fn(model.graphdef, model.mesh, trajectory=True)  # Pairs.
  np.testing.assert_array_equal(path_of(raw_fn, (model.params, model.params)), unguided)
  with_guide = path_of(model.make_sample_fn(trajectory=True), model.params)
  np.testing.assert_array_equal(with_guide, path_of(raw_fn, (model.params, model.guide_params)))
  assert np.abs(with_guide[:, -1] - unguided[:, -1]).max() > 1e-3
  path = evaluate.sample_from_checkpoint(config, workdir)  # --mode=sample names its setting.
  assert os.path.basename(path) == 'samples_4_ddim4_td0_ag1from1_n12_seed0.npz'
  # Guided only in an interval of gamma that holds the last two of the 4 steps' noise levels:
  # the path is the unguided one until then, and guided from there on.
  gammas = np.asarray(model.method.diffusion.gamma_fn(jnp.array([1.0, 0.75, 0.5, 0.25])))
  interval = (float(gammas[1] + gammas[2]) / 2, 1.0)
  late = path_of(model.make_sample_fn(trajectory=True, guidance_interval=interval),
                 model.params)
  np.testing.assert_array_equal(late[:, :3], unguided[:, :3])
  assert np.abs(late[:, 3] - unguided[:, 3]).max() > 1e-3
  in_interval = tiny.tiny_digits(**{**guided, 'sampling.guidance_interval': (0.5, 1.0)})
  assert evaluate.sampling_settings(in_interval)['guidance_interval'] == (0.5, 1.0)
  path = evaluate.sample_from_checkpoint(in_interval, workdir)
  assert os.path.basename(path) == 'samples_4_ddim4_td0_ag1from1_in0.5-1_n12_seed0.npz'

  with pytest.raises(ValueError, match=r'step 3 .*lacks.*steps \[2, 4\]'):
    generation.load(tiny.tiny_digits(**{**guided, 'sampling.guide_fraction': 0.75}),
                    trained_workdir[0])
  with pytest.raises(ValueError, match='needs the guide'):
    generation.load(tiny.tiny_digits(**{'sampling.guide_fraction': 0.25}), workdir).make_sample_fn(
        autoguidance=1.0)  # Loaded without autoguidance: no guide read.
  with open(os.path.join(workdir, 'checkpoints', '1', 'meta', 'metadata'), 'r+b') as f:
    f.truncate(5)  # A damaged guide: one line naming it, as any unreadable checkpoint.
  with pytest.raises(checkpointing.CheckpointError, match=r'can be read \(step 1: meta item'):
    generation.load(config, workdir)


def test_autoguidance_config_errors():
  config = lambda **o: tiny.tiny_digits(**{'sampling.guide_fraction': 0.5, **o})
  with pytest.raises(ValueError, match='must be >= 0'):
    _check(config(**{'sampling.autoguidance': -1.0}), 1)
  for weight, fraction in [(1.0, 0.0), (1.0, 0.1), (1.0, 0.9), (0.0, 1.0)]:  # Steps 0, 0, 4, 4.
    with pytest.raises(ValueError, match=rf'guide_fraction={fraction} .*must lie in \[1, 4\)'):
      _check(config(**{'sampling.autoguidance': weight, 'sampling.guide_fraction': fraction}),
             1)
  with pytest.raises(ValueError, match='one kind of guidance'):
    _check(config(**{'sampling.autoguidance': 1.0, 'sampling.guidance': 0.5,
                     'diffusion.label_dropout': 0.1}), 1)
  with pytest.raises(ValueError, match='not DisCo-Diff'):
    _check(tiny.tiny_digits_disco(**{'sampling.autoguidance': 1.0}), 1)
  for interval in [(0.5, 0.3), (-0.1, 1.0), (0.2, 1.5), (0.4, 0.4), (0.1, 0.5, 0.9)]:
    with pytest.raises(ValueError, match=r'guidance_interval=.* must be \(lo, hi\) with'):
      _check(config(**{'sampling.autoguidance': 1.0, 'sampling.guidance_interval': interval}), 1)
  with pytest.raises(ValueError, match=r'guidance_interval=0.3 must be'):  # A sampler override.
    methods.create(config()).make_sample_fn(None, guidance_interval=0.3)
  _check(config(**{'sampling.autoguidance': 1.0, 'sampling.guidance_interval': (0.3, 1)}), 1)
  _check(config(**{'sampling.autoguidance': 1.0}), 1)


def test_loss_falls_on_a_small_dataset(tmp_path):
  config = tiny.tiny_unet(tiny.tiny_digits(**{  # A compile of its own: the cheaper U-Net.
      'training.num_steps': 60, 'training.log_every': 20, 'training.checkpoint_every': 60,
      'optimizer.warmup_steps': 10, 'training.batch_size': 32,
      # A constant rate: the demo's cosine decay would have it near 0 for the last logged steps.
      'optimizer.learning_rate': 1e-3, 'optimizer.decay': 'constant'}))
  _, losses = recording.train_recording_losses(config, str(tmp_path))
  assert len(losses) == 3
  assert losses[-1] < 0.6 * losses[0], losses


def test_cifar10_config_trains_two_steps_under_mock_data(tmp_path, monkeypatch):
  # Under mock_data the dataset counts as not prepared; the mocked "download" makes no request,
  # so only the network probe is told that the host is reachable.
  monkeypatch.setattr(downloads, 'unreachable', lambda host: None)
  with tfds.testing.mock_data(num_examples=16):
    state = train_loop.train_and_evaluate(tiny.tiny_cifar10(), str(tmp_path))
  assert int(state.step) == 2
  assert os.path.exists(os.path.join(tmp_path, 'samples', 'grid_00000002.png'))
  assert sorted(os.listdir(os.path.join(tmp_path, 'checkpoints'))) == ['2']


def _check(config, num_devices):
  """engine.check_config of `config` with its method, on `num_devices` devices of one process."""
  engine_lib.check_config(config, methods.create(config), num_devices, 1)



def test_bad_configs_fail_before_compiling(tmp_path):
  with pytest.raises(ValueError, match='does not divide over 2 devices'):
    _check(tiny.tiny_digits(**{'training.batch_size': 15}), 2)
  with pytest.raises(ValueError, match='label_dropout'):
    _check(tiny.tiny_digits(**{'sampling.guidance': 2.0,
                                                   'diffusion.label_dropout': 0.0}), 1)
  not_a_dir = tmp_path / 'a_file'
  not_a_dir.write_text('')  # Unwritable for root too: a directory cannot be made inside a file.
  with pytest.raises(PermissionError, match='not writable'):
    train_loop.train_and_evaluate(tiny.tiny_digits(), str(not_a_dir / 'run'))


def test_microbatch_config_errors():
  config = lambda **o: tiny.tiny_digits(**o)
  with pytest.raises(ValueError, match='must divide'):
    _check(config(**{'training.microbatch_size': 5}), 1)
  with pytest.raises(ValueError, match='over 4 devices'):
    _check(config(**{'training.microbatch_size': 2}), 4)
  with pytest.raises(ValueError, match='self-conditioning share 1/2'):
    _check(config(**{'training.microbatch_size': 4}), 4)  # 1 example per device.
  _check(config(**{'training.microbatch_size': 8}), 4)  # 2 per device: fine.
  for bad in (-1, 3):
    with pytest.raises(ValueError, match=f'cpu.sampler_microbatch_size={bad} must be 0'):
      _check(config(**{'cpu.sampler_microbatch_size': bad}), 2)


class _DeterministicLoss(bit_diffusion.BitDiffusion):
  """Bit Diffusion with a loss without randomness, so that microbatches must reproduce the batch
  exactly (a method is any object with the methods' surface; no engine subclass)."""

  def loss(self, graphdef, params, batch, rng, batch_sharding=None):
    del rng, batch_sharding
    bits = self.encode(batch['images'])
    denoise = bit_diffusion.make_denoise_fn(graphdef, params)
    gamma = jnp.linspace(0.2, 0.8, bits.shape[0])
    output = denoise(0.7 * bits, gamma, jnp.zeros_like(bits), None, None)
    per_example = jnp.mean(jnp.square(output - bits).reshape(bits.shape[0], -1), axis=-1)
    return jnp.mean(per_example), {'loss': per_example, 'x0_mse': per_example,
                                   'bit_error': per_example}


def test_microbatches_give_the_batch_gradient():
  """Gradient accumulation over 4 microbatches = one pass over the batch (float32 rounding)."""
  config = tiny.tiny_digits(**{'model.attention_resolutions': (),
                                       'model.channel_multipliers': (1,)})
  deterministic = lambda config: _DeterministicLoss(config, tasks.create(config))
  whole = engine_lib.Engine(config, deterministic(config))
  params = whole.init_state(jax.random.PRNGKey(0)).params
  rng = np.random.default_rng(0)
  batch = whole.global_batch({
      'images': rng.integers(0, 17, (16, 8, 8, 1), dtype=np.int32),
      'labels': rng.integers(0, 10, (16,), dtype=np.int32)})
  config.training.microbatch_size = 4
  split = engine_lib.Engine(config, deterministic(config))
  key = jax.random.PRNGKey(1)
  (loss, terms), grads = jax.jit(whole._loss_and_grads)(params, batch, key)
  (loss_mb, terms_mb), grads_mb = jax.jit(split._loss_and_grads)(params, batch, key)
  np.testing.assert_allclose(loss_mb, loss, rtol=1e-5)
  np.testing.assert_allclose(terms_mb['loss'], terms['loss'], rtol=1e-5)  # Back in batch order.
  for g_mb, g in zip(jax.tree.leaves(grads_mb), jax.tree.leaves(grads)):
    np.testing.assert_allclose(g_mb, g, rtol=1e-4, atol=1e-6)


def test_microbatch_rows_split_every_shard_and_join_back():
  batch = jnp.arange(12 * 2).reshape(12, 2)  # 2 shards of 6 rows.
  ranges = distributed.microbatch_ranges(12, 4, 2)
  assert ranges == [(0, 2), (2, 4), (4, 6)]
  parts = [distributed.microbatch_rows(batch, a, b, 2) for a, b in ranges]
  np.testing.assert_array_equal(parts[0][:, 0], [0, 2, 12, 14])  # 2 rows of each shard.
  np.testing.assert_array_equal(distributed.join_microbatch_rows(parts, 2), batch)
  assert distributed.microbatch_ranges(12, 8, 2) == [(0, 4), (4, 6)]  # The last is smaller.
  assert distributed.microbatch_ranges(12, 0, 2) == [(0, 6)]
  with pytest.raises(ValueError, match='positive multiple of the 2 devices'):
    distributed.microbatch_ranges(12, 3, 2)


def test_sampling_microbatches_give_the_same_samples():
  """cpu.sampler_microbatch_size runs the network on 3 + 3 + 2 images: the same outputs."""
  config = tiny.tiny_digits()
  method = methods.create(config)
  engine = engine_lib.Engine(config, method)
  params = engine.init_state(jax.random.PRNGKey(0)).params
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8, 2 * method.bit_channels))
  gamma = jnp.linspace(0.1, 0.9, 8)
  labels = jnp.arange(8) % 10

  # Jitted, as in the sampler (run eagerly, the network's ~200 ops would each compile, for each
  # of the three batch sizes).
  @functools.partial(jax.jit, static_argnums=4)
  def network(params, x, gamma, labels, microbatch_size):
    model = nnx.merge(engine.graphdef, params)
    return bit_diffusion.run_in_microbatches(model, (x, gamma, labels), microbatch_size)
  whole = network(params, x, gamma, labels, 0)
  split = network(params, x, gamma, labels, 3)
  np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-6)
  labels = np.arange(8, dtype=np.int32)
  images = method.make_sample_fn(engine.graphdef)(params, jax.random.PRNGKey(2), labels)
  config.cpu.sampler_microbatch_size = 3
  images_split = methods.create(config).make_sample_fn(engine.graphdef)(
      params, jax.random.PRNGKey(2), labels)
  # Float32 rounding may differ with the batch shape; a pixel could flip only at a threshold.
  assert np.mean(np.asarray(images) == np.asarray(images_split)) > 0.999


_TWO_DEVICE_SAMPLING = """
import jax, numpy as np
from jax.sharding import Mesh
from bit_diffusion import engine, methods, tasks
from configs import tiny
assert jax.device_count() == 2, jax.devices()
config = tiny.tiny_digits()
method = methods.create(config)
mesh = Mesh(np.array(jax.devices()), ('data',))
trainer = engine.Engine(config, method, mesh)
params = trainer.init_state(jax.random.PRNGKey(0)).params
labels = np.arange(6, dtype=np.int32)
whole = np.asarray(method.make_sample_fn(trainer.graphdef, mesh)(params, jax.random.PRNGKey(2),
                                                                 labels))
config.cpu.sampler_microbatch_size = 4
split_method = methods.create(config)
split = np.asarray(split_method.make_sample_fn(trainer.graphdef, mesh)(
    params, jax.random.PRNGKey(2), labels))
print('equal fraction', np.mean(whole == split))
assert np.mean(whole == split) > 0.999
"""


def test_sampling_microbatches_on_two_devices():
  """Each device splits its own rows (3 each: microbatches of 2 + 1 per device)."""
  env = subprocesses.env(XLA_FLAGS='--xla_force_host_platform_device_count=2')
  result = subprocess.run([sys.executable, '-c', _TWO_DEVICE_SAMPLING], cwd=_REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'equal fraction' in result.stdout


def test_cpu_ynn_fusions_change_kernels_not_results():
  """cpu.ynn_fusions: other CPU kernels for the train step and the sampler; the same state after
  two steps, the same samples."""
  tuned_config = tiny.tiny_unet(tiny.tiny_digits())  # The one-stage U-Net: cheaper compiles.
  plain_config = tiny.tiny_unet(tiny.tiny_digits(**{'cpu.ynn_fusions': ''}))
  tuned_engine = engine_lib.Engine(tuned_config, methods.create(tuned_config))
  plain_engine = engine_lib.Engine(plain_config, methods.create(plain_config))
  assert cpu.compiler_options(plain_config.cpu) is None
  assert cpu.compiler_options(tuned_config.cpu) == {
      'xla_cpu_experimental_ynn_fusion_type':
          'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
  batch = tuned_engine.global_batch({
      'images': np.random.default_rng(0).integers(0, 17, (16, 8, 8, 1), dtype=np.int32),
      'labels': np.arange(16, dtype=np.int32) % 10})
  labels = batch['labels']
  results, hlo, sampler_hlo, samples = [], [], [], []
  for engine in (tuned_engine, plain_engine):
    state = engine.init_state(jax.random.PRNGKey(0))
    train_step = engine.train_step.lower(state, batch).compile()  # Compiled once, run twice.
    hlo.append(train_step.as_text())
    state, metrics = train_step(state, batch)
    state, metrics = train_step(state, batch)
    results.append((_params(state.params), float(metrics.compute()['loss'])))
    sample_fn = engine.method.make_sample_fn(engine.graphdef, steps=4).lower(
        state.params, jax.random.PRNGKey(1), labels).compile()
    sampler_hlo.append(sample_fn.as_text())
    samples.append(np.asarray(sample_fn(state.params, jax.random.PRNGKey(1), labels)))
  # XLA's defaults run the convolutions inside YNNPACK fusions; the tuned list leaves them out,
  # in the train step and in the sampler (both jitted with cpu.compiler_options).
  assert hlo[0].count('ynn_fusion') != hlo[1].count('ynn_fusion')
  assert sampler_hlo[0].count('ynn_fusion') != sampler_hlo[1].count('ynn_fusion')
  assert np.mean(samples[0] == samples[1]) > 0.99  # Integers from float bits: rounding may flip.
  assert len(np.unique(samples[0])) > 2  # Not a constant image that any kernel would give.
  np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
  for tuned, plain in zip(results[0][0], results[1][0]):
    np.testing.assert_allclose(tuned, plain, rtol=1e-4, atol=2e-6)  # Reduction order.


def test_cpu_jit_runs_nested_in_other_traces():
  """cpu.jit: the compiler options at top level; inside a caller's jit, vmap or make_jaxpr (where
  JAX refuses options on a nested jit) the plain jit, with the same values."""
  fn = cpu.jit(lambda x: jnp.sin(x) * 2.0, tiny.tiny_digits().cpu)
  x = jnp.arange(4.0)
  expected = np.sin(np.arange(4.0)) * 2.0
  np.testing.assert_allclose(fn(x), expected, rtol=1e-6)
  assert (fn.tuned._cache_size(), fn.plain._cache_size()) == (1, 0)  # Top level: the options.
  # Nested, the tuned jit would raise (JAX refuses options there): these run the plain one.
  np.testing.assert_allclose(jax.jit(lambda y: fn(y) + 1.0)(x), expected + 1.0, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(fn)(x[:, None])[:, 0], expected, rtol=1e-6)
  assert 'sin' in str(jax.make_jaxpr(fn)(x))
  plain = cpu.jit(jnp.sin, tiny.tiny_digits(**{'cpu.ynn_fusions': ''}).cpu)
  assert type(plain) is type(jax.jit(jnp.sin)) and type(fn) is not type(plain)  # jax.jit itself.
  assert type(cpu.jit(jnp.sin, None)) is type(plain)  # No cpu section: XLA's defaults too.


def test_unknown_cpu_ynn_fusion_is_refused():
  with pytest.raises(ValueError, match="names \\['CONV'\\]"):
    _check(tiny.tiny_digits(**{'cpu.ynn_fusions': 'dot,conv'}), 1)


def test_random_streams_are_separate():
  """Initialisation, training, previews and sampling draw from different keys of the seed; the
  old scheme used fold_in(PRNGKey(seed), k) for both the k-th initialiser and step k."""
  keys = [np.asarray(jax.random.key_data(engine_lib.seed_key(0, p)))
          for p in engine_lib.KEY_PURPOSES]
  assert len({k.tobytes() for k in keys}) == len(keys)
  np.testing.assert_array_equal(
      jax.random.key_data(engine_lib.seed_key(3, 'train')),
      jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(3), 1)))
  with pytest.raises(ValueError, match='Unknown key purpose'):
    engine_lib.seed_key(0, 'dropout')


def test_self_conditioning_is_switched_off_for_a_model_trained_without(caplog):
  config = tiny.tiny_digits(**{'diffusion.self_condition_rate': 0.0})
  method = methods.create(config)
  assert not method.self_condition
  assert 'never saw an estimate' in caplog.text
  assert methods.create(tiny.tiny_digits()).self_condition


def test_learning_rate_schedules():
  """Warm-up to the peak, then constant or cosine to 0 at training.num_steps (exact values)."""
  optimizer = tiny.tiny_digits(**{'optimizer.learning_rate': 1e-3, 'optimizer.warmup_steps': 10,
                                  'optimizer.decay': 'constant'}).optimizer
  constant = engine_lib.learning_rate_schedule(optimizer, 110)
  optimizer.decay = 'cosine'
  cosine = engine_lib.learning_rate_schedule(optimizer, 110)
  steps = jnp.array([0, 4, 9, 10, 60, 85, 110])
  np.testing.assert_allclose(constant(steps), [1e-4, 5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3],
                             rtol=1e-6)
  # After the warm-up, 1e-3 * (1 + cos(pi * (s - 10) / 100)) / 2.
  np.testing.assert_allclose(cosine(steps), [1e-4, 5e-4, 1e-3, 1e-3, 5e-4,
                                             1e-3 * (1 + np.cos(0.75 * np.pi)) / 2, 0.0],
                             rtol=1e-5, atol=1e-9)



def test_hyperparameters_are_the_config_flattened():
  from configs import text as text_config
  config = tiny.tiny_text(text_config)
  flat = train_loop._flat_hparams(config)  # pylint: disable=protected-access
  assert (flat['seed'], flat['task'], flat['method']) == (config.seed, 'text', 'bit_diffusion')
  assert flat['training.batch_size'] == config.training.batch_size
  assert flat['data.splits'] == str(config.data.splits)
  assert len(flat) == sum(len(v) if hasattr(v, 'items') else 1 for v in config.values())
