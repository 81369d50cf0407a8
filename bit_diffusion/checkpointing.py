"""Orbax checkpoints in WORKDIR/checkpoints, with the model's signature checked on restore.

Each checkpoint holds the train state (`StandardSave`, optimizer and EMA included) and a JSON
`meta` item with the config fields the parameters depend on. Restoring into a different model
config fails with a message that lists the differences, before Orbax sees mismatched shapes.
"""

import json
import os
from typing import Any
from typing import Optional

import jax
import orbax.checkpoint as ocp
from etils import epath


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


def create_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  """A CheckpointManager over WORKDIR/checkpoints (absolute path, created if missing)."""
  directory = epath.Path(_absolute(workdir)) / 'checkpoints'
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, signature: dict) -> None:
  """Saves asynchronously; call `manager.wait_until_finished()` before exiting."""
  meta = {'signature': signature, 'step': int(step)}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)))


def check_signature(manager: ocp.CheckpointManager, step: int, wanted: dict) -> None:
  """Raises ValueError if checkpoint `step` was written with a different model signature."""
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  saved = meta['signature']
  differences = [f'{key}: checkpoint has {saved.get(key)!r}, config has {wanted[key]!r}'
                 for key in wanted if saved.get(key) != wanted[key]]
  if differences:
    raise ValueError(
        f'The checkpoint at step {step} in {manager.directory} was written with a different '
        'model config:\n  ' + '\n  '.join(differences) +
        '\nUse the config it was trained with, or a new --workdir to train from scratch.')


def restore(manager: ocp.CheckpointManager, abstract_state: Any, signature: dict,
            step: Optional[int] = None) -> tuple[Any, int]:
  """Restores (state, step) from `step` or the latest checkpoint, laid out as `abstract_state`.

  `abstract_state` is a pytree of jax.ShapeDtypeStruct (with shardings) like the saved state.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {manager.directory}; train first with '
                            '--mode=train and the same --workdir.')
  check_signature(manager, step, signature)
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored.state, step


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` (arrays or structs) carrying the given shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
