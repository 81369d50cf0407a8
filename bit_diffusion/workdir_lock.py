"""One writer per workdir: WORKDIR/.lock, held by the training process for as long as it runs.

The lock file is JSON: {"host", "pid", "pid_start", "start_time", "heartbeat", "command",
"token"}. It is created atomically (O_CREAT | O_EXCL) for local paths, so of two trainings
started in one workdir exactly one gets it; the other stops at once with `WorkdirLockedError`
naming the holder. The holder refreshes "heartbeat" as it trains (`refresh`) and deletes the
file when it ends, however it ends (`release`, from a `finally`).

A lock left behind by a process that died (SIGKILL, power loss) is stale and taken over, with a
log line: on the same host when its process no longer runs (pid and start time), from another
host when its heartbeat is older than `HEARTBEAT_TIMEOUT_S`. Cloud storage (gs://) has no
atomic create: there the lock is written, read back and kept only if it is still this process's
(best effort: two processes starting within the same second can both pass).
"""

import json
import os
import socket
import sys
import time
import uuid
from typing import Any
from typing import Optional

from absl import logging
from etils import epath

from bit_diffusion import outputs

LOCK_NAME = '.lock'
# A lock from another host whose heartbeat is older than this is taken to be dead. The holder
# refreshes it at most every REFRESH_EVERY_S, at log steps and checkpoint saves, so this must
# exceed the longest gap between those (a compile, a preview) by a wide margin.
HEARTBEAT_TIMEOUT_S = 30 * 60
REFRESH_EVERY_S = 60
# A takeover guard older than this belongs to a process that died while taking over.
_GUARD_TIMEOUT_S = 60


class WorkdirLockedError(RuntimeError):
  """Another process trains in this workdir (or took the lock over from this one)."""


def _process_start(pid: int) -> Optional[int]:
  """The start time of process `pid` in clock ticks since boot (Linux), else None.

  Recorded beside the pid so that a pid reused by an unrelated process is not taken for the
  lock's holder.
  """
  try:
    with open(f'/proc/{pid}/stat') as f:
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _pid_alive(pid: int, pid_start: Optional[int]) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, owned by another user.
    return True
  current = _process_start(pid)
  return pid_start is None or current is None or current == pid_start


def describe(holder: dict[str, Any]) -> str:
  """'host h, pid 123, started 2026-12-02 03:33:00' of a lock's contents."""
  return (f'host {holder.get("host", "?")}, pid {holder.get("pid", "?")}, started '
          f'{holder.get("start_time", "?")}')


class WorkdirLock:
  """The lock of one workdir. `acquire` it, `refresh` it while training, `release` it at the end.

  Only the primary process (jax.process_index() == 0) of a multi-host job takes it; the others
  use `active=False`, which makes every method a no-op.
  """

  def __init__(self, workdir: str, active: bool = True,
               heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S):
    self.path = epath.Path(workdir) / LOCK_NAME
    self.active = active
    self.heartbeat_timeout_s = heartbeat_timeout_s
    self.token = uuid.uuid4().hex
    self._last_refresh = 0.0
    self._held = False

  def _contents(self) -> dict[str, Any]:
    pid = os.getpid()
    return {'host': socket.gethostname(), 'pid': pid, 'pid_start': _process_start(pid),
            'start_time': time.strftime('%Y-%m-%d %H:%M:%S'), 'heartbeat': time.time(),
            'command': ' '.join(sys.argv), 'token': self.token}

  def _read(self) -> Optional[dict[str, Any]]:
    """The lock file's contents; None if there is none; {} if unreadable (being written)."""
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _create(self, contents: dict[str, Any]) -> bool:
    """Writes the lock if there is none; False if one exists."""
    if not outputs.create_exclusive(os.fspath(self.path), json.dumps(contents, indent=1)):
      return False
    if '://' in os.fspath(self.path):  # Cloud storage: no atomic create; check it stayed ours.
      time.sleep(1.0)
      return (self._read() or {}).get('token') == self.token
    return True

  def is_stale(self, holder: dict[str, Any]) -> bool:
    """Whether the holder is gone: same host and its process ended, or no heartbeat lately."""
    if holder.get('host') == socket.gethostname() and isinstance(holder.get('pid'), int):
      return not _pid_alive(holder['pid'], holder.get('pid_start'))
    return time.time() - float(holder.get('heartbeat', 0)) > self.heartbeat_timeout_s

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirLockedError naming the process that holds it."""
    if not self.active:
      return
    contents = self._contents()
    for _ in range(20):  # Retries only while a lock file is being written or taken over.
      if self._create(contents):
        self._held, self._last_refresh = True, time.monotonic()
        return
      holder = self._read()
      if holder is None:  # Released meanwhile.
        continue
      if not holder:  # Being written right now, or garbage if it stays so for a minute.
        if self._age() <= _GUARD_TIMEOUT_S:
          time.sleep(0.05)
          continue
      elif not self.is_stale(holder):
        raise self._locked_error(holder)
      self._take_over(holder)
    raise WorkdirLockedError(f'Could not take the lock {self.path}; another process keeps '
                             'taking it. Check for other trainings in this workdir.')

  def _age(self) -> float:
    try:
      return time.time() - self.path.stat().mtime
    except OSError:
      return 0.0

  def _take_over(self, stale: dict[str, Any]) -> None:
    """Removes the stale lock `stale`, unless another process is taking it over right now."""
    guard = epath.Path(os.fspath(self.path) + '.takeover')
    if guard.exists() and time.time() - guard.stat().mtime > _GUARD_TIMEOUT_S:
      guard.unlink(missing_ok=True)
    if not outputs.create_exclusive(os.fspath(guard), self.token):
      time.sleep(0.1)  # Someone else takes it over; the caller then meets their lock.
      return
    try:
      if self._read() == stale:
        logging.warning('Taking over the stale lock %s of a run that is gone (%s).', self.path,
                        describe(stale))
        self.path.unlink(missing_ok=True)
    finally:
      guard.unlink(missing_ok=True)

  def _locked_error(self, holder: dict[str, Any]) -> WorkdirLockedError:
    return WorkdirLockedError(
        f'The workdir {self.path.parent} is in use by another training ({describe(holder)}; '
        f'lock file {self.path}). Wait for it to end or stop it, or pass another --workdir; '
        'if that run is gone for good, delete the lock file.')

  def refresh(self, force: bool = False) -> None:
    """Renews the heartbeat (at most every REFRESH_EVERY_S unless `force`).

    Raises WorkdirLockedError if the lock is no longer this process's (another process judged
    it stale and took it over): two writers must not share the workdir.
    """
    if not self._held or (not force and time.monotonic() - self._last_refresh < REFRESH_EVERY_S):
      return
    holder = self._read()
    if holder and holder.get('token') != self.token:
      self._held = False
      raise WorkdirLockedError(f'Another process took over the lock of {self.path.parent} '
                               f'({describe(holder)}); this training stops so that the two do '
                               'not write the same checkpoints.')
    contents = dict(holder or self._contents(), heartbeat=time.time())
    temporary = epath.Path(os.fspath(self.path) + f'.{self.token}')
    temporary.write_text(json.dumps(contents, indent=1))
    temporary.replace(self.path)  # Atomic for local paths.
    self._last_refresh = time.monotonic()

  def release(self) -> None:
    """Deletes the lock file if it is still this process's."""
    if not self._held:
      return
    self._held = False
    if (self._read() or {}).get('token') == self.token:
      self.path.unlink(missing_ok=True)

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()
