"""The timing loop that every benchmark shares (ours, the PyTorch port, our U-Net in PyTorch).

Standard library only: the main venv (bench.py) and the peer venv (peer_torch.py,
same_network_torch.py) both import it.
"""

import time
from typing import Any
from typing import Callable


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
