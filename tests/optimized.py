"""Full LLVM optimisation for the few tests that compute a lot.

The tests compile at LLVM level 0 (tests/subprocesses.py: XLA_FLAGS), which makes compiles
cheap and the generated code about 2x slower: right for a train step taken a few times, wrong for
the exactness tests' thousand training steps and 10^5 samples. Measured on the AR exactness fit
(1,000 steps of 1,024 sequences; shared AVX2 EPYC, 2026-12-03): 42.7 s of CPU at level 0, 22.7 s
at level 3, the compile about 1 s longer. These helpers compile one function at the level of a
user's run (XLA's default, 3), leaving the process's flags alone.
"""

from typing import Any
from typing import Callable

import jax

COMPILER_OPTIONS = {'xla_backend_optimization_level': 3}


def jit(fn: Callable[..., Any], **jit_kwargs) -> Callable[..., Any]:
  """jax.jit(fn) compiled at the user's optimisation level."""
  return jax.jit(fn, compiler_options=COMPILER_OPTIONS, **jit_kwargs)


def call(jitted: Callable[..., Any], *args) -> Any:
  """jitted(*args) for an already-jitted function (a library's sample function), compiled at
  the user's optimisation level."""
  return jitted.lower(*args).compile(COMPILER_OPTIONS)(*args)
