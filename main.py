"""Bit Diffusion command line: train (default), sample or eval one config in one workdir.

  python main.py --config=configs/digits.py --workdir=runs/digits
  python main.py --config=configs/digits.py --workdir=runs/digits --mode=sample \
      --config.sampling.steps=50 --config.sampling.td=1
  python main.py --config=configs/digits.py --workdir=runs/digits --mode=check  # Checkpoints.

Kept short on purpose: the logic lives in `bit_diffusion/`, where it is tested.
"""

import importlib
import os
import sys

from bit_diffusion import cpu

# Restarts once with glibc's transparent-huge-page tunable (faster XLA:CPU steps; see
# bit_diffusion/cpu.py; BIT_DIFFUSION_HUGEPAGES=0 opts out). Before anything else runs.
cpu.reexec_with_hugepages()
cpu.collect_garbage_less_often()  # Faster tracing (bit_diffusion/cpu.py).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# JAX and the library take seconds to import: they are imported in main(), after the flags
# parsed, so that a mistake on the command line is reported at once.

# The module of each task's sample and eval modes.
MODES_BY_TASK = {'image': 'bit_diffusion.evaluate',
                 'captioning': 'bit_diffusion.captioning.evaluate',
                 'text': 'bit_diffusion.text.evaluate',
                 'points': 'bit_diffusion.points.evaluate'}

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval', 'infill', 'check', 'tokenizer'],
                  'train: train and resume; sample: write samples of the latest checkpoint; '
                  'eval: score the latest checkpoint; infill: fill the unknown part of '
                  '--infill_file with the latest checkpoint; check: list the checkpoints of the '
                  'workdir and whether each reads (on the host, no devices); tokenizer '
                  '(captioning): train and write the SentencePiece model of '
                  'config.tokenizer.path.')
config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
flags.DEFINE_string('infill_file', '', '--mode=infill: the examples with known and unknown '
                    "parts. Text: a .txt with '_' per unknown token, or an .npz of 'tokens' and "
                    "'mask'; images: an .npz of 'images', 'mask' (and 'labels'); captions: a "
                    ".json [{\"index\": held-out image, \"caption\": \"with _ per unknown "
                    'token"}].')
flags.DEFINE_string('coordinator_address', '', 'Multi-process (GPU clusters without SLURM): '
                    'HOST:PORT of process 0. TPU pods and SLURM are detected without flags.')
flags.DEFINE_integer('num_processes', 0, 'Multi-process: the number of processes.')
flags.DEFINE_integer('process_id', -1, 'Multi-process: the index of this process.')
flags.DEFINE_bool('debug', False, 'Show the full traceback of errors such as bad data or a '
                  'locked workdir (also BIT_DIFFUSION_DEBUG=1), instead of one line.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  if config.task not in MODES_BY_TASK:
    raise app.UsageError(f'Unknown config.task {config.task!r}; choose one of '
                         f'{tuple(MODES_BY_TASK)}.')
  if FLAGS.mode == 'infill' and not FLAGS.infill_file:
    sys.exit('Error: --mode=infill needs --infill_file=FILE: the examples with their unknown '
             "parts marked (text: a .txt with '_' per unknown token; see --helpfull).")
  import jax
  from absl import logging

  from bit_diffusion import checkpointing
  from bit_diffusion import distributed
  from bit_diffusion import workdir_lock
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if jax.default_backend() == 'gpu':  # TensorFlow (TFDS data loading) must leave GPUs to JAX.
    import tensorflow as tf
    tf.config.set_visible_devices([], 'GPU')
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  # Errors a user can cause (config, data, checkpoints, workdir): one line, no traceback, unless
  # --debug or BIT_DIFFUSION_DEBUG=1.
  user_errors = (ValueError, FileNotFoundError, PermissionError, FloatingPointError,
                 workdir_lock.WorkdirLockedError, checkpointing.CheckpointError)
  try:
    _run_mode(config, FLAGS.mode, FLAGS.workdir)
  except user_errors as e:
    if FLAGS.debug or os.environ.get('BIT_DIFFUSION_DEBUG') == '1':
      raise
    sys.exit('Error: ' + ' '.join(str(e).split()))


def _run_mode(config, mode: str, workdir: str) -> None:
  from bit_diffusion import checkpointing
  from bit_diffusion import train_loop
  modes = lambda: importlib.import_module(MODES_BY_TASK[config.task])
  if mode == 'train':
    train_loop.train_and_evaluate(config, workdir)
  elif mode == 'sample':
    modes().sample_from_checkpoint(config, workdir)
  elif mode == 'eval':
    modes().evaluate_checkpoint(config, workdir)
  elif mode == 'infill':
    modes().infill_from_file(config, workdir, FLAGS.infill_file)
  elif mode == 'check':
    for name, state in checkpointing.check_all(workdir):
      print(f'checkpoints/{name}: {state}', flush=True)
  elif config.task == 'captioning':
    modes().write_tokenizer(config)
  else:
    raise app.UsageError('--mode=tokenizer is for captioning configs.')


def _parse_flags_or_exit(argv: list[str]) -> list[str]:
  """Parses the flags once up front so that a config mistake ends in one clear line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'Error on the command line: {e}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # From config overrides.
    message = str(e.args[0]) if e.args else str(e)
    # ml_collections nests the repr of a KeyError's message: undo its quotes and escapes.
    message = message.replace('\\n', ' ').replace("\\'", "'")
    while len(message) > 1 and message[0] == message[-1] and message[0] in '"\'':
      message = message[1:-1]
    message = ' '.join(message.split())
    if isinstance(e, (AttributeError, KeyError)):
      hint = '' if 'Did you mean' in message else _unknown_field_hint(argv, message)
      message = f'no such field: {message}{hint}'
    sys.exit(f'Error in the config: {message}')


def _unknown_field_hint(argv: list[str], message: str) -> str:
  """' (--config.a.b: configs/x.py has no field a.b; ...)' for the override flag that names the
  unknown field, or '' when no flag does."""
  config_file = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), 'the config')
  for arg in argv:
    if arg.startswith('--config.'):
      dotted = arg[len('--config.'):].split('=', 1)[0]
      if dotted.split('.')[-1] == message.split()[0].strip('\'"'):
        return (f' ({config_file} has no field {dotted}: a config holds only the fields its task '
                'and method read; see the config file and configs/common.py.)')
  return ''

if __name__ == '__main__':
  remaining_argv = _parse_flags_or_exit(sys.argv)
  # Parsed once: a second parse would define the --config.x.y override flags again and fail.
  app.run(main, flags_parser=lambda _: remaining_argv)
