"""The environment of the tests' subprocesses (main.py, workers, scripts): CPU, quiet
TensorFlow, and the tests' shared persistent compilation cache.

Every subprocess reads and writes the cache of the pytest processes (tests/conftest.py), so a
restarted or repeated run loads the XLA executables that an earlier process compiled instead of
compiling them again (5-30 s each on a 2-core CPU). JAX reads its config from these variables;
the tiny configs leave `training.compilation_cache` off, which would point the cache elsewhere.
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(REPO, '.pytest_cache', 'jax')
MIN_COMPILE_SECONDS = 0.5  # Compiles shorter than this are not worth a cache entry.
# Cheaper compiles for the tests (compiles are most of the suite's time). XLA's HLO passes
# (fusion, layouts, sharding) are those of a user's run; only the emission of machine code
# differs: LLVM at optimisation level 0; loop fusions through XLA's older LLVM IR emitters
# instead of the MLIR fusion emitters; one LLVM module instead of 32 parts compiled in parallel
# (two test workers already keep both cores busy). The tiny digits train step then compiles with
# 4.0-4.7 s of CPU instead of 8.5-10.5 s (AVX2 emulation, docs/benchmarks.md); its steps run no
# slower than the tests need. Numbers agree to float tolerance (elementwise code is emitted
# differently).
XLA_FLAGS = ('--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false '
             '--xla_cpu_parallel_codegen_split_count=1')


def xla_flags(extra: str = '') -> str:
  """XLA_FLAGS for a test process: the user's, the tests' above, then `extra`, each once."""
  flags = os.environ.get('XLA_FLAGS', '').split()
  flags += [f for f in f'{XLA_FLAGS} {extra}'.split() if f not in flags]
  return ' '.join(flags)


def env(**variables) -> dict[str, str]:
  """os.environ with the settings above, then `variables`; an XLA_FLAGS among them is added to
  the tests' XLA_FLAGS (e.g. --xla_force_host_platform_device_count=8)."""
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3',
          'JAX_COMPILATION_CACHE_DIR': CACHE_DIR,
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': str(MIN_COMPILE_SECONDS), **variables,
          'XLA_FLAGS': xla_flags(variables.get('XLA_FLAGS', ''))}
