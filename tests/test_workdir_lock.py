"""One writer per workdir: the lock's rules, and two real trainings started in one workdir."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bit_diffusion import workdir_lock
from tests import test_preemption


def _write_lock(workdir, **fields):
  holder = {'host': socket.gethostname(), 'pid': os.getpid(), 'pid_start': None,
            'start_time': '2026-01-01 00:00:00', 'heartbeat': time.time(), 'token': 'x',
            **fields}
  with open(os.path.join(workdir, '.lock'), 'w') as f:
    json.dump(holder, f)


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def test_second_lock_is_refused_with_the_holder_named(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path)):
    holder = json.loads((tmp_path / '.lock').read_text())
    assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=rf'in use by another training \(host .*, pid {os.getpid()}, '
                             r'started .*Wait for it to end'):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  assert not (tmp_path / '.lock').exists()  # Released.


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
  _write_lock(str(tmp_path), pid=_dead_pid())
  with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
    assert json.loads((tmp_path / '.lock').read_text())['token'] == lock.token


def test_lock_of_a_live_process_whose_pid_was_reused_is_taken_over(tmp_path):
  _write_lock(str(tmp_path), pid_start=1)  # This pid, but another start time.
  with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
    assert json.loads((tmp_path / '.lock').read_text())['token'] == lock.token


def test_lock_of_another_host_is_stale_only_after_the_heartbeat_timeout(tmp_path):
  _write_lock(str(tmp_path), host='elsewhere', heartbeat=time.time() - 60)
  with pytest.raises(workdir_lock.WorkdirLockedError, match='host elsewhere'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  _write_lock(str(tmp_path), host='elsewhere',
              heartbeat=time.time() - workdir_lock.HEARTBEAT_TIMEOUT_S - 1)
  with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
    assert json.loads((tmp_path / '.lock').read_text())['token'] == lock.token


def test_refresh_renews_the_heartbeat_and_stops_a_run_whose_lock_was_taken(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  before = json.loads((tmp_path / '.lock').read_text())
  time.sleep(0.01)
  lock.refresh(force=True)
  after = json.loads((tmp_path / '.lock').read_text())
  assert after['heartbeat'] > before['heartbeat'] and after['token'] == lock.token
  _write_lock(str(tmp_path), host='elsewhere', token='theirs')
  with pytest.raises(workdir_lock.WorkdirLockedError, match='took over the lock'):
    lock.refresh(force=True)
  lock.release()
  assert json.loads((tmp_path / '.lock').read_text())['token'] == 'theirs'  # Not ours: kept.


def test_inactive_lock_writes_nothing(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), active=False) as lock:
    lock.refresh(force=True)
  assert os.listdir(tmp_path) == []


def test_two_trainings_in_one_workdir_then_sigkill_then_a_new_run(tmp_path):
  workdir = str(tmp_path / 'run')
  long_run = {'training.num_steps': 100_000, 'training.checkpoint_every': 100_000,
              'training.log_every': 1}
  first = test_preemption._start(workdir, str(tmp_path / 'first.log'), **long_run)
  try:
    first_steps = test_preemption.LoggedSteps(str(tmp_path / 'first.log'))
    test_preemption._wait_for(lambda: first_steps() >= 1 or first.poll() is not None, 300,
                              'the first run to train')
    assert first.poll() is None, open(tmp_path / 'first.log').read()[-3000:]
    started = time.time()
    second = test_preemption._start(workdir, str(tmp_path / 'second.log'), **long_run)
    assert second.wait(timeout=120) != 0
    log = open(tmp_path / 'second.log').read()
    last_line = log.strip().splitlines()[-1]
    assert last_line.startswith('Error: The workdir') and f'pid {first.pid}' in last_line, log
    assert 'Traceback' not in log
    assert time.time() - started < 120 and first.poll() is None  # It stopped; the first runs.
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  finally:
    first.kill()
  assert os.path.exists(os.path.join(workdir, '.lock'))  # Left behind by the killed run.
  third = test_preemption._start(workdir, str(tmp_path / 'third.log'),  # Short: 2 steps.
                                 **{'training.num_steps': 2, 'training.num_grid_samples': 0})
  assert third.wait(timeout=300) == 0, open(tmp_path / 'third.log').read()[-3000:]
  assert 'Taking over the stale lock' in open(tmp_path / 'third.log').read()
  assert not os.path.exists(os.path.join(workdir, '.lock'))
