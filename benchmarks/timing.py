"""The timing loop that every benchmark shares (ours, the PyTorch port, our U-Net in PyTorch).

Standard library only: the main venv (bench.py) and the peer venv (peer_torch.py,
same_network_torch.py) both import it.
"""

import argparse
import resource
import time
from typing import Any
from typing import Callable


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The timing flags of the PyTorch scripts (bench.py has its own, with --quick defaults)."""
  parser.add_argument('--batch-sizes', default='8,32')
  parser.add_argument('--sample-steps', type=int, default=100)
  parser.add_argument('--sample-repeats', type=int, default=2)
  parser.add_argument('--warmup-steps', type=int, default=2)
  parser.add_argument('--min-steps', type=int, default=6)
  parser.add_argument('--min-seconds', type=float, default=10.0)
  parser.add_argument('--max-steps', type=int, default=50)


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
  """User plus system CPU seconds of this process (every thread), or with
  resource.RUSAGE_CHILDREN of its finished subprocesses."""
  usage = resource.getrusage(who)
  return usage.ru_utime + usage.ru_stime


def timed_calls(call: Callable[[int], Any], *, min_steps: int, min_seconds: float,
                max_steps: int) -> list[float]:
  """Calls call(0), call(1), ... until at least `min_steps` calls and `min_seconds` seconds have
  passed, and at most `max_steps` calls; returns the seconds of each call. `call` must block until
  its work is done (jax.block_until_ready; PyTorch on CPU is synchronous)."""
  seconds = []
  begin = time.perf_counter()
  while len(seconds) < max_steps and (
      len(seconds) < min_steps or time.perf_counter() - begin < min_seconds):
    start = time.perf_counter()
    call(len(seconds))
    seconds.append(time.perf_counter() - start)
  return seconds
