"""Damaged checkpoints: detected, skipped with one line, kept on disk; training and sampling use
the newest intact one, and a resumed run still ends where an uninterrupted one does."""

import logging
import os
import random
import shutil
import types

import jax
import numpy as np
import pytest

from bit_diffusion import checkpointing
from bit_diffusion import generation
from bit_diffusion import train_loop
from configs import tiny

SIX_STEPS = {'training.num_steps': 6, 'training.checkpoint_every': 2, 'training.log_every': 2,
             'training.max_checkpoints': 5}


def _config(**overrides):
  """Six steps of the tiny digits config on the one-stage U-Net (the cheapest compile, and fewer
  arrays for every checkpoint read: these tests damage checkpoints, not the network)."""
  return tiny.tiny_unet(tiny.tiny_digits(**{**SIX_STEPS, **overrides}))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(workdir of a run up to step 4 with checkpoints 2 and 4, final params of a straight 6-step
  run). The workdir holds the straight run's checkpoints 2 and 4: those of a run stopped at step
  4 (tests/test_train.py resumes such a workdir bit-identically)."""
  straight_workdir = str(tmp_path_factory.mktemp('straight'))
  straight = train_loop.train_and_evaluate(_config(), straight_workdir)
  workdir = str(tmp_path_factory.mktemp('four'))
  shutil.copytree(os.path.join(straight_workdir, 'checkpoints'),
                  os.path.join(workdir, 'checkpoints'))
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '6'))
  return workdir, _leaves(straight.params)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _files(step_dir):
  return sorted(os.path.join(root, name) for root, _, names in os.walk(step_dir)
                for name in names)


def _largest_file(step_dir):
  return max(_files(step_dir), key=os.path.getsize)


def _truncate(path, size):
  with open(path, 'r+b') as f:
    f.truncate(size)


def _host_arrays(workdir, step):
  """Every array of checkpoint `step`, read as numpy."""
  manager = checkpointing.create_manager(workdir, 5)
  return [np.asarray(x) for x in jax.tree.leaves(checkpointing.read_to_host(manager, step))]


# Files of checkpoint 4 whose damage must be detected, and where each is cut (a fraction of its
# size): the largest array file (at half, at zero bytes, at three quarters), the meta item, the
# array tree's metadata and its shardings.
MUST_DETECT = (('largest', 0.5), ('largest', 0.0), ('largest', 0.75),
               (os.path.join('meta', 'metadata'), 0.5), (os.path.join('state', '_METADATA'), 0.5),
               (os.path.join('state', '_sharding'), 0.5))


def test_truncated_files_are_detected_or_harmless(runs, tmp_path):
  """Each file of checkpoint 4 cut at random byte counts: `check_all` calls it broken, or the
  cut part was never read (the arrays read back equal the intact ones). The cuts of MUST_DETECT
  are always detected; the other files are drawn at random (OCDBT names its data files at random,
  and many of its small ones are never read)."""
  workdir, _ = runs
  intact_dir = os.path.join(workdir, 'checkpoints', '4')
  rng = random.Random(0)
  files = [os.path.relpath(f, intact_dir) for f in _files(intact_dir)]
  largest = os.path.relpath(_largest_file(intact_dir), intact_dir)
  intact = _host_arrays(workdir, 4)
  for case in range(len(MUST_DETECT) + 6):  # 6 random cuts besides.
    copy = str(tmp_path / f'case{case}')
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('.lock'))
    must_detect = case < len(MUST_DETECT)
    if must_detect:
      relative, fraction = MUST_DETECT[case]
      relative = largest if relative == 'largest' else relative
      cut = int(fraction * os.path.getsize(os.path.join(intact_dir, relative)))
    else:
      relative = rng.choice(files)
      cut = rng.randrange(0, max(1, os.path.getsize(os.path.join(intact_dir, relative)) - 1))
    _truncate(os.path.join(copy, 'checkpoints', '4', relative), cut)
    states = dict(checkpointing.check_all(copy))
    assert states['2'] == 'intact'
    if states['4'].startswith('broken: '):
      assert '\n' not in states['4']
    else:
      assert not must_detect, (relative, cut, states)
      assert states['4'] == 'intact', states
      for a, b in zip(intact, _host_arrays(copy, 4), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('relative_file', ['largest', os.path.join('meta', 'metadata')])
def test_training_resumes_from_the_previous_checkpoint_to_the_same_end(runs, tmp_path, caplog,
                                                                        relative_file):
  workdir, straight = runs
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  step_dir = os.path.join(copy, 'checkpoints', '4')
  if relative_file == 'largest':
    path = _largest_file(step_dir)
  else:
    path = os.path.join(step_dir, relative_file)
  _truncate(path, os.path.getsize(path) // 3)
  before = sorted(_files(step_dir))

  # Sampling reads only the EMA weights: it falls back to step 2 when the cut hit them (or the
  # meta item), else their values are intact; it leaves the broken checkpoint as it is.
  config = _config()
  model = generation.load(config, copy)
  if relative_file != 'largest':
    assert model.step == 2
  if model.step == 4:
    for a, b in zip(_leaves(generation.load(config, workdir).params), _leaves(model.params)):
      np.testing.assert_array_equal(a, b)
  assert sorted(_files(step_dir)) == before

  caplog.set_level(logging.WARNING)
  resumed = train_loop.train_and_evaluate(_config(), copy)
  warnings = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert len(warnings) >= 1 and warnings[0].startswith(f'Checkpoint 4 in {copy}')
  assert all('\n' not in w for w in warnings)
  for a, b in zip(straight, _leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  aside = [n for n in os.listdir(os.path.join(copy, 'checkpoints')) if '.broken-' in n]
  assert len(aside) == 1 and aside[0].startswith('4.broken-')
  assert sorted(_files(os.path.join(copy, 'checkpoints', aside[0]))) == sorted(
      f.replace(step_dir, os.path.join(copy, 'checkpoints', aside[0])) for f in before)
  assert dict(checkpointing.check_all(copy))['6'] == 'intact'


def test_echoes_of_a_failed_read_are_dropped_and_other_unraisables_kept():
  """The unraisable-error hook installed by the first checkpoint read drops the closed event
  loop's errors and those raised from a collected read coroutine's GeneratorExit, and passes
  on everything else."""
  seen = []
  hook = checkpointing._drop_event_loop_noise(seen.append)  # pylint: disable=protected-access
  def raised_from(cause):
    try:
      raise Exception('Encountered error while reading array index') from cause
    except Exception as e:  # pylint: disable=broad-except
      return e
  echoes = [RuntimeError('Event loop is closed'), raised_from(GeneratorExit())]
  kept = [RuntimeError('something else'), raised_from(ValueError('bad shard')), KeyError('x')]
  for value in echoes + kept:
    hook(types.SimpleNamespace(exc_value=value))
  assert [u.exc_value for u in seen] == kept


def test_no_readable_checkpoint_is_one_clear_error(runs, tmp_path):
  workdir, _ = runs
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  for step in ('2', '4'):
    _truncate(os.path.join(copy, 'checkpoints', step, 'meta', 'metadata'), 3)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'No checkpoint in .* can be read \(step 4: .*; step 2: .*\)'):
    generation.load(_config(), copy)
  assert sorted(os.listdir(os.path.join(copy, 'checkpoints'))) == ['2', '4']  # Nothing moved.


def test_a_checkpoint_from_before_a_signature_field_matches_the_old_behaviour(tmp_path):
  """A checkpoint written before `model.positions` existed had learned positions: it restores
  into a config that asks for 'learned' and is refused, naming the field, for 'rotary' (and as
  much for `ggm.token_scale`, 'one' before it existed)."""
  manager = checkpointing.create_manager(str(tmp_path), 2)
  checkpointing.save(manager, 1, {'w': np.zeros(2)}, {'model.width': 8})
  manager.wait_until_finished()
  checkpointing.check_signature(manager, 1, {'model.width': 8, 'model.positions': 'learned'})
  with pytest.raises(ValueError, match="model.positions: checkpoint has 'learned', config has "
                     "'rotary'"):
    checkpointing.check_signature(manager, 1, {'model.width': 8, 'model.positions': 'rotary'})
  with pytest.raises(ValueError, match='model.width: checkpoint has 8, config has 16'):
    checkpointing.check_signature(manager, 1, {'model.width': 16})
  # GGM's classifier scaled its token embeddings later: such a checkpoint is a 'one' classifier.
  checkpointing.check_signature(manager, 1, {'model.width': 8, 'ggm.token_scale': 'one'})
  with pytest.raises(ValueError, match="ggm.token_scale: checkpoint has 'one', config has "
                     "'sqrt_width'"):
    checkpointing.check_signature(manager, 1, {'model.width': 8, 'ggm.token_scale': 'sqrt_width'})
  # Each difference ends in ';' or '.', so main.py's one-line message still separates them.
  with pytest.raises(ValueError, match="model config:\n  model.width: checkpoint has 8, config "
                     "has 16;\n  model.positions: checkpoint has 'learned', config has "
                     "'rotary'.\nUse the config it was trained with"):
    checkpointing.check_signature(manager, 1, {'model.width': 16, 'model.positions': 'rotary'})
