"""Bad input gets a clear error: each case below, and the table of messages in docs/.

`python -m tests.test_bad_inputs` runs these same cases and writes docs/bad_inputs.md; each test
fails when its message no longer matches that table, and `test_docs_table_is_current` when a
case was added or removed without rewriting it. Every case also checks that nothing in its
folder was changed, added or lost by the failed command (files made as the case's input, before
`_inputs_ready`, are the starting point).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from bit_diffusion import analog_bits
from bit_diffusion import checkpointing
from bit_diffusion import engine
from bit_diffusion import evaluate
from bit_diffusion import input_pipeline
from bit_diffusion import methods
from bit_diffusion import schedules
from bit_diffusion import tasks
from bit_diffusion import train_loop
from bit_diffusion import workdir_lock
from bit_diffusion.captioning import data as caption_data
from bit_diffusion.points import evaluate as points_evaluate
from bit_diffusion.text import corpus as text_corpus
from bit_diffusion.text import data as text_data
from bit_diffusion.text import infill as text_infill
from configs import common
from configs import shapes_captioning
from configs import text
from configs import tiny
from configs import toy_disco
from tests import subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS_TABLE = os.path.join(REPO, 'docs', 'bad_inputs.md')


_snapshots = {}


def _snapshot(tmp) -> dict[str, tuple[int, int]]:
  """{relative path: (size, mtime_ns)} of every file under `tmp`."""
  files = {}
  for root, _, names in os.walk(tmp):
    for name in names:
      path = os.path.join(root, name)
      stat = os.stat(path)
      files[os.path.relpath(path, tmp)] = (stat.st_size, stat.st_mtime_ns)
  return files


def _inputs_ready(tmp):
  """Called by a case once it has made its input files: the folder must stay as it is now."""
  _snapshots[tmp] = _snapshot(tmp)


def _cli(tmp, *flags):
  """Runs main.py with flags; raises RuntimeError with the error line it printed on failure."""
  result = subprocess.run([sys.executable, 'main.py', f'--workdir={tmp}/run', *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=180,
                          env=subprocesses.env())
  if result.returncode == 0:
    return
  lines = result.stderr.strip().splitlines()
  error = next((line for line in lines if line.startswith('Error')), lines[-1])
  assert lines[-1] == error and 'Traceback' not in result.stderr, result.stderr[-3000:]
  raise RuntimeError(error)


def _npz(tmp, **arrays):
  path = os.path.join(tmp, 'data.npz')
  np.savez(path, **arrays)
  _inputs_ready(tmp)
  return tiny.tiny_digits(**{'data.name': 'npz', 'data.path': path})


def _load(config):
  input_pipeline.create_source(config.data)



def _engine(**overrides):
  config = tiny.tiny_digits(**overrides)
  engine.Engine(config, methods.create(config))


def _check(config, num_devices):
  engine.check_config(config, methods.create(config), num_devices, 1)


def _position_noise_on_images(tmp):
  del tmp
  config = tiny.tiny_digits()
  with config.unlocked():  # The field exists in the text configs only.
    config.diffusion.position_noise_rate = 0.5
  _check(config, 1)


def _ggm_on_a_unet_config(tmp):
  del tmp
  config = tiny.tiny_digits()
  with config.unlocked():  # A Bit Diffusion config given GGM's section, not its network.
    config.method = 'ggm'
    config.ggm = common.ggm_config(num_sweeps=1)
  methods.create(config).create_network(jax.random.key(0))


def _guidance_without_label_dropout(tmp):
  del tmp
  config = tiny.tiny_digits(**{'diffusion.label_dropout': 0.0})
  method = methods.create(config)
  graphdef, _ = nnx.split(method.create_network(jax.random.key(0)))
  method.make_sample_fn(graphdef, guidance=1.0)


def _corrupt_folder(tmp):
  root = os.path.join(tmp, 'images', 'cats')
  os.makedirs(root)
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(root, 'good.png'))
  with open(os.path.join(root, 'broken.png'), 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n not really a png')
  _inputs_ready(tmp)
  _load(tiny.tiny_digits(**{'data.name': 'folder', 'data.path': os.path.dirname(root),
                                    'data.num_bits': 8}))


def _other_checkpoint(tmp):
  workdir = os.path.join(tmp, 'run')
  train_loop.train_and_evaluate(tiny.tiny_digits(**{'training.num_steps': 2}), workdir)
  _inputs_ready(tmp)
  train_loop.train_and_evaluate(tiny.tiny_digits(**{'model.base_channels': 32}), workdir)


def _unwritable_workdir(tmp):
  blocker = os.path.join(tmp, 'file')
  open(blocker, 'w').close()
  _inputs_ready(tmp)
  train_loop.train_and_evaluate(tiny.tiny_digits(), os.path.join(blocker, 'run'))


def _missing_cifar10(tmp):
  config = tiny.tiny_cifar10()
  config.data.data_dir = os.path.join(tmp, 'tfds')
  config.data.download = False
  _load(config)


def _not_a_tokenizer(tmp):
  path = os.path.join(tmp, 'captions.model')
  with open(path, 'w') as f:
    f.write('this is a text file, not a SentencePiece model')
  _inputs_ready(tmp)
  config = shapes_captioning.get_config()
  config.tokenizer.path = path
  caption_data.create_tokenizer(config)


def _text_file(tmp, data: bytes) -> str:
  path = os.path.join(tmp, 'corpus.txt')
  with open(path, 'wb') as f:
    f.write(data)
  _inputs_ready(tmp)
  return path


def _text_corpus(tmp, data: bytes, **overrides):
  config = tiny.tiny_text(text, **{'data.name': 'files', 'data.path': _text_file(tmp, data),
                                   **overrides})
  return text_data.load_corpus(config).windows('train', config.data.sequence_length)


def _infill_text(tmp, lines: str):
  path = os.path.join(tmp, 'known.txt')
  with open(path, 'w') as f:
    f.write(lines)
  _inputs_ready(tmp)
  text_infill.read_known(path, text_corpus.CharacterVocabulary('text8'), 16)


def _infill_tokens(tmp):
  path = os.path.join(tmp, 'known.npz')
  np.savez(path, tokens=np.full((2, 16), 27), mask=np.ones((2, 16), bool))
  _inputs_ready(tmp)
  text_infill.read_known(path, text_corpus.CharacterVocabulary('text8'), 16)


def _too_few_token_bits(tmp):
  config = shapes_captioning.get_config()
  config.data.num_bits = 3
  methods.create(config)


def _saved_checkpoints(tmp, steps=(2, 4)):
  """WORKDIR=<tmp>/run with untrained tiny-digits checkpoints at `steps` (no training)."""
  config = tiny.tiny_digits()
  trainer = engine.Engine(config, methods.create(config))
  state = trainer.init_state(engine.seed_key(0, 'init'))
  manager = checkpointing.create_manager(os.path.join(tmp, 'run'), 5)
  for step in steps:
    checkpointing.save(manager, step, state, trainer.signature())
  manager.wait_until_finished()
  return os.path.join(tmp, 'run')


def _unfitted_prior(tmp):
  """A DisCo-Diff checkpoint of step 2 of 4 (untrained weights): its prior's stage never ran."""
  config = tiny.tiny_toy(toy_disco)
  trainer = engine.Engine(config, methods.create(config))
  manager = checkpointing.create_manager(os.path.join(tmp, 'run'), 5)
  checkpointing.save(manager, 2, trainer.init_state(engine.seed_key(0, 'init')),
                     trainer.signature())
  manager.wait_until_finished()
  _inputs_ready(tmp)
  points_evaluate.sample_from_checkpoint(config, os.path.join(tmp, 'run'))


def _unreadable_checkpoints(tmp):
  workdir = _saved_checkpoints(tmp)
  for step in (2, 4):
    with open(os.path.join(workdir, 'checkpoints', str(step), 'meta', 'metadata'), 'r+b') as f:
      f.truncate(5)
  _inputs_ready(tmp)
  evaluate.sample_from_checkpoint(tiny.tiny_digits(), workdir)


def _autoguidance_without_its_guide(tmp):
  """Autoguided sampling of a run that kept no checkpoint where its guide would lie (step 3)."""
  workdir = _saved_checkpoints(tmp)
  _inputs_ready(tmp)
  evaluate.sample_from_checkpoint(tiny.tiny_digits(**{
      'sampling.autoguidance': 1.0, 'sampling.guide_fraction': 0.75}), workdir)


def _write_lock(tmp):
  os.makedirs(os.path.join(tmp, 'run'))
  with open(os.path.join(tmp, 'run', '.lock'), 'w') as f:
    json.dump({'host': 'gpu-node-7', 'pid': 4242, 'start_time': '2026-12-01 09:00:00',
               'heartbeat': time.time(), 'command': 'main.py', 'token': 'theirs'}, f)
  _inputs_ready(tmp)


def _locked_workdir(tmp):
  _write_lock(tmp)
  train_loop.train_and_evaluate(tiny.tiny_digits(), os.path.join(tmp, 'run'))


def _empty_folder(tmp):
  os.makedirs(os.path.join(tmp, 'images', 'cats'))
  _load(tiny.tiny_digits(**{'data.name': 'folder', 'data.path': os.path.join(tmp, 'images')}))


def _object_array_npz(tmp):
  path = os.path.join(tmp, 'data.npz')
  np.savez(path, images=np.array([object()] * 4, dtype=object))
  _inputs_ready(tmp)
  _load(tiny.tiny_digits(**{'data.name': 'npz', 'data.path': path}))


# (what the user did wrong, how to trigger it given a temporary folder, the exception type).
CASES = [
    ('Misspelt config key on the command line', lambda t: _cli(
        t, '--config=configs/digits.py', '--config.model.base_chanels=3'), RuntimeError),
    ('Config value of the wrong type', lambda t: _cli(
        t, '--config=configs/digits.py', '--config.training.batch_size=sixteen'), RuntimeError),
    ('Unknown bit encoding', lambda t: analog_bits.BitCodec(8, 'grey'), ValueError),
    ('Bit width outside 1..16', lambda t: analog_bits.BitCodec(17), ValueError),
    ('Bit width too small for the data (digits need 5 bits)',
     lambda t: _load(tiny.tiny_digits(**{'data.num_bits': 4})), ValueError),
    ('Unknown noise schedule', lambda t: schedules.get_gamma_fn('cosin'), ValueError),
    ('Unknown learning-rate decay',
     lambda t: _check(tiny.tiny_digits(**{'optimizer.decay': 'linear'}), 1), ValueError),
    ('Image size not divisible by the U-Net downsampling',
     lambda t: _engine(**{'data.image_size': 10, 'model.channel_multipliers': (1, 2, 2)}),
     ValueError),
    ('Attention resolution that never occurs',
     lambda t: _engine(**{'model.channel_multipliers': (1, 2),  # digits.py's two stages.
                          'model.attention_resolutions': (16,)}), ValueError),
    ('Global batch not divisible by the devices',
     lambda t: _check(tiny.tiny_digits(**{'training.batch_size': 15}), 2),
     ValueError),
    ('Guidance asked of a model trained without label dropout',
     lambda t: _check(tiny.tiny_digits(
         **{'sampling.guidance': 1.0, 'diffusion.label_dropout': 0.0}), 1), ValueError),
    ('Class-conditional training on unlabelled data',
     lambda t: _load(_npz(t, images=np.zeros((4, 8, 8, 1), np.uint8))), ValueError),
    ('Data of the wrong image shape',
     lambda t: _load(_npz(t, images=np.zeros((4, 16, 16, 1), np.uint8),
                          labels=np.zeros(4, np.int32))), ValueError),
    ('Data of a float dtype', lambda t: _load(_npz(t, images=np.zeros((4, 8, 8, 1), np.float32),
                                                   labels=np.zeros(4, np.int32))), ValueError),
    ('Data values outside the bit range',
     lambda t: _load(_npz(t, images=np.full((4, 8, 8, 1), 40, np.int32),
                          labels=np.zeros(4, np.int32))), ValueError),
    ('An .npz holding pickled objects', _object_array_npz, ValueError),
    ('Missing .npz file', lambda t: _load(tiny.tiny_digits(
        **{'data.name': 'npz', 'data.path': os.path.join(t, 'nope.npz')})), FileNotFoundError),
    ('Corrupt image in a folder dataset', _corrupt_folder, ValueError),
    ('Dataset not prepared and no network (TFDS cifar10)', _missing_cifar10, FileNotFoundError),
    ('Misspelt TFDS dataset name', lambda t: _load(tiny.tiny_cifar10(
        **{'data.name': 'tfds', 'data.tfds_name': 'mnsit', 'data.download': False,
           'data.data_dir': os.path.join(t, 'tfds')})), ValueError),
    ('Checkpoint in the workdir from a different model config', _other_checkpoint, ValueError),
    ('Workdir that cannot be written', _unwritable_workdir, PermissionError),
    ('Caption tokenizer file that is not a SentencePiece model', _not_a_tokenizer, ValueError),
    ('Bit width too small for the caption vocabulary', _too_few_token_bits, ValueError),
    ('Image-only field set on a captioning config', lambda t: _cli(
        t, '--config=configs/shapes_captioning.py', '--config.sampling.guidance=1.0'),
     RuntimeError),
    ('Diffusion field set on the autoregressive baseline', lambda t: _cli(
        t, '--config=configs/shapes_captioning_ar.py', '--config.sampling.steps=10'),
     RuntimeError),
    ('Image folder with no images in it', _empty_folder, FileNotFoundError),
    ('Sampling label outside the classes',
     lambda t: tasks.create(tiny.tiny_digits()).sampling_conditions(4, '3,12'), ValueError),
    ('Sampling from a workdir with no checkpoint',
     lambda t: evaluate.sample_from_checkpoint(tiny.tiny_digits(), os.path.join(t, 'run')),
     FileNotFoundError),
    ('Sampling when no checkpoint can be read (metadata cut short)', _unreadable_checkpoints,
     checkpointing.CheckpointError),
    ('Checking the checkpoints of a workdir that has none',
     lambda t: checkpointing.check_all(t), FileNotFoundError),
    ('Second training in a workdir another run holds', _locked_workdir,
     workdir_lock.WorkdirLockedError),
    ('Second training in a held workdir, on the command line', lambda t: (_write_lock(t), _cli(
        t, *tiny.tiny_digits_flags())), RuntimeError),
    ('Missing .npz file, on the command line (one line, no traceback)', lambda t: _cli(
        t, '--config=configs/digits.py', '--config.data.name=npz',
        f'--config.data.path={t}/nope.npz'), RuntimeError),
    ('Sampling from a workdir with no checkpoint, on the command line', lambda t: _cli(
        t, '--config=configs/digits.py', '--mode=sample'), RuntimeError),
    ('Empty text corpus', lambda t: _text_corpus(t, b' \n\n'), ValueError),
    ('Text corpus that is not UTF-8', lambda t: _text_corpus(t, 'caf\u00e9'.encode('latin-1')),
     ValueError),
    ('Text window longer than the training split',
     lambda t: _text_corpus(t, b'a short corpus\n', **{'data.sequence_length': 64}), ValueError),
    ('Bit width too small for the text vocabulary (27 characters need 5 bits)',
     lambda t: methods.create(tiny.tiny_text(text, **{'data.num_bits': 4})), ValueError),
    ('Position noise (a level per sequence position) on images',
     _position_noise_on_images, ValueError),
    ('Text infill line of the wrong length', lambda t: _infill_text(t, 'the c_t sat\n'),
     ValueError),
    ('Text infill tokens outside the vocabulary', _infill_tokens, ValueError),
    ('Infill mode without an infill file, on the command line', lambda t: _cli(
        t, '--config=configs/text.py', '--mode=infill'), RuntimeError),
    ('GGM method on a config without its ggm section',
     lambda t: methods.create(tiny.tiny_digits(method='ggm')), ValueError),
    ('GGM method on a caption config without its ggm section', lambda t: methods.create(
        tiny.tiny_captioning(shapes_captioning, method='ggm')), ValueError),
    ('GGM on images with a U-Net in config.model', _ggm_on_a_unet_config, ValueError),
    ('Unknown ggm.token_scale', lambda t: methods.create(tiny.tiny_digits_ggm(
        **{'ggm.token_scale': 'sqrt'})).create_network(jax.random.key(0)), ValueError),
    ('Bit Diffusion method on a GGM config (no bits or diffusion section)',
     lambda t: methods.create(tiny.tiny_digits_ggm(method='bit_diffusion')), ValueError),
    ('Image values above data.display_max (the top of the GGM vocabulary)',
     lambda t: _load(_npz(t, images=np.full((4, 8, 8, 1), 20, np.uint8),
                          labels=np.zeros(4, np.int32))), ValueError),
    ('data.display_max outside the bit range',
     lambda t: tasks.create(tiny.tiny_digits(**{'data.display_max': 40})), ValueError),
    ('Bit Diffusion guidance set on the GGM digits config, on the command line', lambda t: _cli(
        t, '--config=configs/digits_ggm.py', '--config.sampling.guidance=1.0'), RuntimeError),
    ('Sampling with guidance from a model trained without label dropout (the demo config)',
     _guidance_without_label_dropout, ValueError),
    ('DisCo-Diff with no latents', lambda t: methods.create(
        tiny.tiny_toy(toy_disco, **{'disco.num_latents': 0})), ValueError),
    ('DisCo-Diff with a codebook of 0 codes', lambda t: methods.create(
        tiny.tiny_toy(toy_disco, **{'disco.codebook_size': 0})), ValueError),
    ('Sampling from a DisCo-Diff checkpoint saved before its prior was fitted', _unfitted_prior,
     ValueError),
    ('Autoguided sampling of a run that kept no guide checkpoint',
     _autoguidance_without_its_guide, ValueError),
    ('Autoguidance asked of DisCo-Diff', lambda t: _check(tiny.tiny_digits_disco(
        **{'sampling.autoguidance': 1.0}), 1), ValueError),
    ('A guidance interval given high end first', lambda t: _check(tiny.tiny_digits(
        **{'sampling.guidance_interval': (1.0, 0.3)}), 1), ValueError),
]


def run_case(index: int, tmp: str) -> str:
  """Runs CASES[index]; returns its message with `tmp` replaced by <tmp>, one line."""
  title, trigger, error_type = CASES[index]
  _snapshots[tmp] = _snapshot(tmp)
  try:
    trigger(tmp)
  except error_type as e:
    message = ' '.join(str(e).replace(str(tmp), '<tmp>').split())
  else:
    raise AssertionError(f'{title}: no {error_type.__name__} was raised.')
  before, after = _snapshots.pop(tmp), _snapshot(tmp)
  assert after == before, f'{title}: the failed command changed files: {before} -> {after}'
  return message


def _documented_messages() -> dict[str, str]:
  rows = {}
  with open(DOCS_TABLE) as f:
    for line in f:
      cells = [c.strip() for c in line.strip().strip('|').split('|')]
      if len(cells) == 3 and cells[0].isdigit():
        rows[cells[1]] = cells[2].strip('`').strip().replace('\\|', '|')
  return rows


@pytest.mark.parametrize('index', range(len(CASES)), ids=[c[0] for c in CASES])
def test_bad_input_gets_the_documented_message(index, tmp_path):
  message = run_case(index, str(tmp_path))
  documented = _documented_messages()
  assert documented.get(CASES[index][0]) == message, (
      'The message changed: run `python -m tests.test_bad_inputs` to update docs/bad_inputs.md.')


def test_network_the_config_cannot_build_leaves_no_checkpoints_folder(tmp_path):
  """Found when the network's shapes are built, before the checkpoint manager would make its
  folder (the file snapshots of the cases above do not see an empty folder)."""
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match='head_dim=64 exceeds the 16 channels'):
    train_loop.train_and_evaluate(tiny.tiny_digits(**{'model.head_dim': 64}),
                                  workdir)
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


def test_docs_table_is_current():
  assert list(_documented_messages()) == [c[0] for c in CASES]


def write_docs_table() -> None:
  """Runs every case and writes docs/bad_inputs.md (the messages, as users see them)."""
  lines = ['# Bad inputs and the messages they get', '',
           'Generated by `python -m tests.test_bad_inputs` from the cases in',
           '`tests/test_bad_inputs.py`, which fails when a message changes. `<tmp>` stands for '
           'the folder of the case. Every error is raised before anything is trained or '
           'overwritten, and the case checks that no file in its folder was changed, added or '
           'lost.', '', '| # | bad input | message |', '| --- | --- | --- |']
  for index, (title, _, _) in enumerate(CASES):
    with tempfile.TemporaryDirectory() as tmp:
      message = run_case(index, tmp)
    cell = message.replace('|', '\\|')
    cell = f'`` {cell} ``' if '`' in cell else f'`{cell}`'  # Markdown code, backticks inside.
    lines.append(f'| {index + 1} | {title} | {cell} |')
    print(f'{index + 1}. {title}: {message}', file=sys.stderr)
  with open(DOCS_TABLE, 'w') as f:
    f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  write_docs_table()
