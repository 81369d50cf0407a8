"""Shared test set-up: CPU only, quiet TensorFlow, and JAX's persistent compilation cache.

The cache (under .pytest_cache/jax) lets repeated runs skip XLA compiles that cost 5-30 s each on
a 2-core CPU; the tests' subprocesses share it (tests/subprocesses.py). Tests that need several
CPU devices run in a subprocess with XLA_FLAGS set.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from tests import subprocesses  # noqa: E402

jax.config.update('jax_compilation_cache_dir', subprocesses.CACHE_DIR)
jax.config.update('jax_persistent_cache_min_compile_time_secs', subprocesses.MIN_COMPILE_SECONDS)
