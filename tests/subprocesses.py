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


def env(**variables) -> dict[str, str]:
  """os.environ with the settings above, then `variables` (e.g. XLA_FLAGS)."""
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3',
          'JAX_COMPILATION_CACHE_DIR': CACHE_DIR,
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': str(MIN_COMPILE_SECONDS), **variables}
