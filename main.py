"""Bit Diffusion command line: train (default), sample or eval one config in one workdir.

  python main.py --config=configs/digits.py --workdir=runs/digits
  python main.py --config=configs/digits.py --workdir=runs/digits --mode=sample \
      --config.sampling.steps=50 --config.sampling.td=1

Kept short on purpose: the logic lives in `bit_diffusion/`, where it is tested.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bit_diffusion import evaluate  # noqa: E402
from bit_diffusion import train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'],
                  'train: train and resume; sample: write samples of the latest checkpoint; '
                  'eval: score the latest checkpoint.')
config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Hide accelerators from TensorFlow, used only for data loading and logging.
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], 'GPU')
  except ImportError:
    pass
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  config = FLAGS.config
  if FLAGS.mode == 'train':
    train.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == 'sample':
    evaluate.sample_from_checkpoint(config, FLAGS.workdir)
  else:
    evaluate.evaluate_checkpoint(config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
