"""Orbax checkpoints in WORKDIR/checkpoints, with the model's signature checked on restore.

Each checkpoint holds the train state (`StandardSave`, optimizer and EMA included) and a JSON
`meta` item with the config fields the parameters depend on. Restoring into a different model
config fails with a message that lists the differences, before Orbax sees mismatched shapes.

Restores check what they read: a checkpoint whose files cannot be read (cut short by a full
disk or a partial copy, missing, bad metadata) is reported in one log line naming its step and
the reason, and the newest intact one is used instead. Training sets the broken one aside as
checkpoints/<step>.broken-<time> (it is never deleted); sampling leaves it where it is.
`check_all` lists every checkpoint of a workdir with its state (`main.py --mode=check`).
"""

import json
import os
import sys
import time
from typing import Any
from typing import Callable
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir can be read."""


class BrokenCheckpointError(Exception):
  """One checkpoint cannot be read. Attributes: step, reason (one line)."""

  def __init__(self, step: int, reason: str):
    super().__init__(f'step {step}: {reason}')
    self.step, self.reason = step, reason


def model_signature(config, fields_by_section: dict[str, tuple[str, ...]]) -> dict[str, Any]:
  """{'model.base_channels': 256, ...}: the named config fields (those that fix the shapes and
  meaning of the parameters), JSON-ready."""
  signature = {}
  for section, fields in fields_by_section.items():
    for field in fields:
      value = config[section][field]
      signature[f'{section}.{field}'] = list(value) if isinstance(value, tuple) else value
  return json.loads(json.dumps(signature))  # Normalise tuples and numpy scalars.


def _absolute(path: str) -> str:
  """Local paths made absolute (Orbax needs that); remote ones (gs://...) as they are."""
  return path if '://' in path else os.path.abspath(path)


def ensure_writable_dir(path: str) -> str:
  """Creates `path` if needed and checks that files can be written there; returns it absolute.

  Works for local folders and, through etils.epath, for cloud storage (gs://...), which a
  multi-host job needs as its shared workdir.
  """
  path = _absolute(path)
  directory = epath.Path(path)
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f'.write_test_{jax.process_index()}_{os.getpid()}'
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise PermissionError(f'The workdir {path} is not writable ({e.strerror or e}); pass a '
                          '--workdir you can write to.') from e
  return path


def create_manager(workdir: str, max_to_keep: int,
                   keep_steps: tuple[int, ...] = ()) -> ocp.CheckpointManager:
  """A CheckpointManager over WORKDIR/checkpoints (absolute path, created if missing) that
  keeps the newest `max_to_keep` checkpoints and, beside them, those of `keep_steps` (an
  autoguidance guide)."""
  directory = epath.Path(_absolute(workdir)) / 'checkpoints'
  if keep_steps:
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(create=True, preservation_policy=(
        policies.AnyPreservationPolicy([policies.LatestN(max_to_keep),
                                        policies.CustomSteps(keep_steps)])))
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, signature: dict) -> None:
  """Saves asynchronously; call `manager.wait_until_finished()` before exiting."""
  meta = {'signature': signature, 'step': int(step)}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)))


def _one_line(error: BaseException) -> str:
  """The first line of an error's message (TensorStore's carry details after it), shortened."""
  lines = str(error).strip().splitlines()
  text = ' '.join(lines[0].split()) if lines else type(error).__name__
  return text if len(text) <= 300 else text[:297] + '...'


def _drop_event_loop_noise(hook=sys.unraisablehook):
  """sys.unraisablehook without the echoes of a failed read.

  When a read fails, TensorStore's other reads still finish and try to call back into Orbax's
  event loop, already closed ("RuntimeError: Event loop is closed"), and Orbax's pending read
  coroutines, closed when collected, raise from their GeneratorExit ("Encountered error while
  reading array index"); each is reported as an unraisable error with a long traceback (hundreds
  of them, burying the real error). They are harmless, so they are dropped.
  """
  def quiet_hook(unraisable):
    value = unraisable.exc_value
    closed_loop = isinstance(value, RuntimeError) and str(value) == 'Event loop is closed'
    if not (closed_loop or isinstance(getattr(value, '__cause__', None), GeneratorExit)):
      hook(unraisable)
  quiet_hook.drops_event_loop_noise = True
  return quiet_hook


def _read(step: int, read: Callable[[], Any], what: str = '') -> Any:
  """read(), with any failure to read checkpoint `step` turned into BrokenCheckpointError
  (its reason prefixed with `what`)."""
  if not getattr(sys.unraisablehook, 'drops_event_loop_noise', False):
    sys.unraisablehook = _drop_event_loop_noise()
  try:
    return read()
  except Exception as e:  # Orbax and TensorStore raise ValueError, OSError, KeyError, ...
    raise BrokenCheckpointError(step, what + _one_line(e)) from e


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The JSON `meta` item of checkpoint `step`; BrokenCheckpointError if unreadable."""
  meta = _read(step, lambda: manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta, 'meta item: ')
  if not isinstance(meta, dict) or 'signature' not in meta:
    raise BrokenCheckpointError(step, f'its meta item holds no signature: {meta!r:.100}')
  return meta


# Signature fields added after checkpoints were written, with the value that every checkpoint
# written before them had: such a checkpoint matches a config that sets this value.
LATER_SIGNATURE_FIELDS = {
    'model.positions': 'learned',  # Rotary positions came later; before, all were learned.
    'ggm.token_scale': 'one',  # GGM's classifier scaled its token embeddings from 2026-12-05.
}


def check_signature(manager: ocp.CheckpointManager, step: int, wanted: dict) -> None:
  """Raises ValueError if checkpoint `step` was written with a different model signature."""
  saved = dict(LATER_SIGNATURE_FIELDS)
  saved.update(read_meta(manager, step)['signature'])
  differences = [f'{key}: checkpoint has {saved.get(key)!r}, config has {wanted[key]!r}'
                 for key in wanted if saved.get(key) != wanted[key]]
  if differences:
    raise ValueError(
        f'The checkpoint at step {step} in {manager.directory} was written with a different '
        'model config:\n  ' + ';\n  '.join(differences) +
        '.\nUse the config it was trained with, or a new --workdir to train from scratch.')


def restore_newest_intact(manager: ocp.CheckpointManager, read: Callable[[int], Any],
                          signature: dict, step: Optional[int] = None,
                          set_aside_broken: bool = False) -> tuple[Any, int]:
  """(read(step), step) of the newest checkpoint that reads, its signature checked.

  Broken checkpoints newer than it are logged (one line each) and skipped; with
  `set_aside_broken` (training, which will save those steps again) they are renamed to
  <step>.broken-<time> once an intact one was found. With `step` given, only that one is tried.
  Raises FileNotFoundError if there is no checkpoint, CheckpointError if none reads, and
  ValueError if the newest intact one has another signature.
  """
  steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f'No checkpoint in {manager.directory}; train first with '
                            '--mode=train and the same --workdir.')
  broken = []
  for candidate in steps:
    try:
      check_signature(manager, candidate, signature)
      result = _read(candidate, lambda: read(candidate))
    except BrokenCheckpointError as e:
      logging.warning('Checkpoint %d in %s cannot be read (%s); trying the one before it.',
                      candidate, manager.directory, e.reason)
      broken.append(e)
      continue
    if broken and set_aside_broken:
      _set_aside(manager, [e.step for e in broken])
    return result, candidate
  listing = '; '.join(str(e) for e in broken)
  raise CheckpointError(
      f'No checkpoint in {manager.directory} can be read ({listing}). Copy intact checkpoints '
      'back, or move the folder away to train from scratch (python main.py --mode=check '
      'lists them).')


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames checkpoints `steps` to <step>.broken-<time> (process 0), so that training can
  save those steps again; never deletes them."""
  stamp = time.strftime('%Y%m%d-%H%M%S')
  if jax.process_index() == 0:
    for step in steps:
      source = epath.Path(manager.directory) / str(step)
      target = source.parent / f'{step}.broken-{stamp}'
      source.rename(target)
      logging.warning('Set the unreadable checkpoint %d aside as %s (kept, not deleted).',
                      step, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('checkpoints set aside')
  manager.reload()


def restore(manager: ocp.CheckpointManager, abstract_state: Any, signature: dict,
            step: Optional[int] = None, set_aside_broken: bool = False) -> tuple[Any, int]:
  """Restores (state, step) from `step` or the newest intact checkpoint, laid out as
  `abstract_state` (a pytree of jax.ShapeDtypeStruct with shardings like the saved state).

  See `restore_newest_intact` for what happens to broken checkpoints.
  """
  def read(step):
    return manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))).state
  return restore_newest_intact(manager, read, signature, step, set_aside_broken)


def check_all(workdir: str) -> list[tuple[str, str]]:
  """[(name, state)] of every checkpoint in WORKDIR/checkpoints, newest first.

  state: 'intact', 'broken: <why>', or 'set aside: broken earlier' for the
  <step>.broken-<time> folders. Every array is read into host memory (numpy), one checkpoint
  at a time; nothing is placed on devices.
  """
  directory = epath.Path(_absolute(workdir)) / 'checkpoints'
  if not directory.exists():
    raise FileNotFoundError(f'No checkpoints folder in {workdir}; train first with '
                            '--mode=train and this --workdir.')
  manager = ocp.CheckpointManager(directory)
  rows = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      read_meta(manager, step)
      _read(step, lambda: read_to_host(manager, step))
      rows.append((str(step), 'intact'))
    except BrokenCheckpointError as e:
      rows.append((str(step), f'broken: {e.reason}'))
  aside = sorted((p.name for p in directory.iterdir() if '.broken-' in p.name), reverse=True)
  return rows + [(name, 'set aside: found unreadable by an earlier run') for name in aside]


def read_to_host(manager: ocp.CheckpointManager, step: int) -> Any:
  """The train state of checkpoint `step` as nested dicts of numpy arrays (host memory)."""
  path = epath.Path(manager.directory) / str(step) / 'state'
  tree = ocp.PyTreeCheckpointHandler().metadata(path).tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(restore_args=restore_args))).state


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` (arrays or structs) carrying the given shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
