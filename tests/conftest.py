"""Shared test set-up: CPU only, quiet TensorFlow, and JAX's persistent compilation cache.

The cache (under .pytest_cache/jax) lets repeated runs skip XLA compiles that cost 5-30 s each on
a 2-core CPU; the tests' subprocesses share it (tests/subprocesses.py), and the XLA_FLAGS of
tests/subprocesses.py (cheaper compiles). Tests that need several CPU devices run in a
subprocess with more XLA_FLAGS.
"""

import fcntl
import gc
import os
import shutil
import sys
from typing import Callable

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import subprocesses  # noqa: E402

os.environ['XLA_FLAGS'] = subprocesses.xla_flags()  # Before JAX starts its CPU backend.

import jax  # noqa: E402
import pytest  # noqa: E402

from bit_diffusion import cpu  # noqa: E402

jax.config.update('jax_compilation_cache_dir', subprocesses.CACHE_DIR)
jax.config.update('jax_persistent_cache_min_compile_time_secs', subprocesses.MIN_COMPILE_SECONDS)
# As main.py: Python's garbage collections took 7 to 8.5 s of 82 to 95 s (about 9%) of
# test_train.py and test_disco.py run together, 1.6 to 2.5 s with these thresholds (peak memory
# 1.9 -> 2.1 GB).
cpu.collect_garbage_less_often()

# Test files that take longest (subprocesses, several compiles), longest first, as measured
# (the per-file table of `python benchmarks/suite_profile.py DIR`; docs/benchmarks.md).
# pytest-xdist's `--dist loadfile` hands out whole files in collection order, and by default
# first reorders them by their number of tests, which put these few-test files last: one worker
# then ran them alone at the end. Longest first, the short files fill in at the end and both
# workers finish together.
SLOWEST_FILES = ('test_train.py', 'test_ggm.py', 'test_distributed.py', 'test_disco_digits.py',
                 'test_preemption.py', 'test_unet.py', 'test_exact_bit_diffusion.py',
                 'test_digits_metrics.py', 'test_disco.py', 'test_config_variants.py',
                 'test_ggm_images.py', 'test_checkpoint_recovery.py',
                 'test_exact_autoregressive.py', 'test_captioning_train.py',
                 'test_ggm_captions.py', 'test_bad_inputs.py', 'test_bench.py',
                 'test_text_task.py')


def pytest_configure(config):
  if hasattr(config.option, 'loadscopereorder'):  # pytest-xdist: keep the order below.
    config.option.loadscopereorder = False


def pytest_collection_finish(session):
  """Moves every object alive after collection (the imported modules: about 215,000) to the
  garbage collector's permanent generation, which its collections no longer scan (their time in
  test_train.py and test_disco.py together: 3.3 -> 2.0 s)."""
  del session
  gc.freeze()


def pytest_collection_modifyitems(items):
  """Runs the files of SLOWEST_FILES first, in that order; the others keep theirs."""
  def rank(item):
    name = os.path.basename(str(item.path))
    return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)
  items.sort(key=rank)


@pytest.fixture(scope='session')
def digits_cache(tmp_path_factory) -> Callable[[], str]:
  """fn() -> a new `eval.cache_dir` holding only the digits metrics' classifier
  (bit_diffusion/metrics/digits_classifier.py; reference statistics and the rest are computed
  into it anew). The classifier is trained once per test run (about 15 s of CPU), by whichever
  pytest-xdist worker asks first: the workers of one run share the parent of their base
  temporary directories, and a file lock makes the others wait for the first's file."""
  from bit_diffusion.metrics import digits_classifier
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # Shared by the workers of this run (pytest-xdist's documented recipe).
  shared = root / 'digits_classifier'
  shared.mkdir(exist_ok=True)
  with open(shared / 'lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    digits_classifier.load_or_train(str(shared))
  trained = digits_classifier.cache_path(str(shared))

  def new_cache() -> str:
    cache = tmp_path_factory.mktemp('digits_cache')
    shutil.copy(trained, cache)
    return str(cache)

  return new_cache
