"""One process of a multi-device or multi-process run, for tests/test_distributed.py.

  python -m tests.distributed_worker --workdir=W --out=OUT.npz [--param_sharding=replicated,fsdp]
      [--captions] [--text8_corpus=FILE]
      [--coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=I]

Trains the tiny digits config (one-stage U-Net) with train_and_evaluate, then writes the final
parameters (gathered from all processes), the process and device counts, and the example indices
this process read at every step, to OUT.npz; with several shardings (one process start, one
import of the library for all) the later ones' parameters follow as `<sharding>_param_<i>`. With
--captions it also trains the tiny shapes captioner (its training previews are generated
across the processes) and captions held-out images with `--mode=sample`'s code, whose
results JSON path goes to OUT.npz as `captions`.
With --text8_corpus it also trains configs/text8.py made tiny on that file (with the last
sharding) and writes its final parameters as `text8_param_<i>`.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from bit_diffusion import cpu  # noqa: E402
from bit_diffusion import distributed  # noqa: E402
from bit_diffusion import tasks  # noqa: E402
from bit_diffusion import train_loop  # noqa: E402
from bit_diffusion.captioning import evaluate as caption_evaluate  # noqa: E402
from configs import shapes_captioning  # noqa: E402
from configs import text8  # noqa: E402
from configs import tiny  # noqa: E402
from tests import subprocesses  # noqa: E402

flags.DEFINE_string('workdir', None, 'Training workdir.')
flags.DEFINE_string('out', None, 'Where to write the results (.npz).')
flags.DEFINE_list('param_sharding', ['replicated'], 'training.param_sharding values, each '
                  'trained one after the other (the second and later in WORKDIR/<value>).')
flags.register_validator('param_sharding', lambda values: len(set(values)) == len(values),
                         'Each --param_sharding value once: they name the runs\' workdirs.')
flags.DEFINE_bool('captions', False, 'Also train and sample the tiny captioner.')
flags.DEFINE_string('text8_corpus', '', 'Also train the tiny text8 config on this text file.')
flags.DEFINE_string('coordinator_address', '', 'HOST:PORT of process 0.')
flags.DEFINE_integer('num_processes', 0, 'Number of processes.')
flags.DEFINE_integer('process_id', -1, 'This process.')
FLAGS = flags.FLAGS

NUM_STEPS = 3
OVERRIDES = {'training.num_steps': NUM_STEPS, 'training.checkpoint_every': NUM_STEPS,
             'training.log_every': 1, 'training.num_grid_samples': 0}


def config(param_sharding='replicated'):
  """The tiny digits config on the one-stage U-Net (the cheapest compile: these tests check how
  the batch, the weights and the checkpoints are split, not the network)."""
  return tiny.tiny_unet(
      tiny.tiny_digits(**OVERRIDES, **{'training.param_sharding': param_sharding}))


def caption_config():
  """The tiny shapes captioner, 2 steps; 4 previews and 6 captions in batches of 4."""
  return tiny.tiny_captioning(shapes_captioning, **{
      'training.num_steps': 2, 'training.checkpoint_every': 2, 'training.log_every': 1})


def text8_config(corpus_path: str, param_sharding: str = 'replicated'):
  """configs/text8.py made tiny (windows of 16, width 32), 3 steps, on `corpus_path`."""
  return tiny.tiny_text(text8, **OVERRIDES, **{
      'data.path': corpus_path, 'training.param_sharding': param_sharding})


def _gathered(params) -> list[np.ndarray]:
  return [np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
          for leaf in jax.tree.leaves(params)]


def main(_):
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  jax.config.update('jax_compilation_cache_dir', subprocesses.CACHE_DIR)
  cpu.collect_garbage_less_often()  # As main.py.
  first, *others = FLAGS.param_sharding
  cfg = config(first)
  state = train_loop.train_and_evaluate(cfg, FLAGS.workdir)
  iterator = tasks.create(cfg).train_iterator(cfg.training.batch_size, cfg.seed)
  indices = np.stack([iterator.indices_at(step) for step in range(NUM_STEPS)])
  params = _gathered(state.params)
  other_params = {}
  for sharding in others:
    other_state = train_loop.train_and_evaluate(config(sharding),
                                                os.path.join(FLAGS.workdir, sharding))
    other_params.update({f'{sharding}_param_{i}': p
                         for i, p in enumerate(_gathered(other_state.params))})
  captions = ''
  if FLAGS.captions:
    caption_workdir = os.path.join(FLAGS.workdir, 'captions')
    train_loop.train_and_evaluate(caption_config(), caption_workdir)
    captions = caption_evaluate.sample_from_checkpoint(caption_config(), caption_workdir)
  text8_params = []
  if FLAGS.text8_corpus:
    text8_state = train_loop.train_and_evaluate(
        text8_config(FLAGS.text8_corpus, FLAGS.param_sharding[-1]),
        os.path.join(FLAGS.workdir, 'text8'))
    text8_params = _gathered(text8_state.params)
  np.savez(FLAGS.out, indices=indices, process_count=jax.process_count(),
           device_count=jax.device_count(), captions=captions,
           **{f'param_{i}': p for i, p in enumerate(params)}, **other_params,
           **{f'text8_param_{i}': p for i, p in enumerate(text8_params)})


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
