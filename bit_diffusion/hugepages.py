"""Transparent huge pages for XLA's CPU buffers (Linux with glibc): faster CPU training.

XLA:CPU allocates the temporary buffer of every execution with `posix_memalign` (0.7 GiB for the
CPU-width cifar10 train step at batch 8, 2.5 GiB at batch 32). glibc serves a block that large
with a fresh `mmap` and unmaps it on `free`, so every step faults it in again, 4 KiB at a time:
190,000 page faults and ~0.3 s of kernel time per batch-8 step on the 2-core CPU of
README "Benchmarks". glibc's tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35) makes malloc advise
the kernel to back its mappings with transparent huge pages (2 MiB), where the kernel allows it
(/sys/kernel/mm/transparent_hugepage/enabled is `madvise` or `always`): ~900 faults per step
instead, and train steps ran 10-29% faster there (README "Benchmarks"). Allocation only: the
results are the same bits.

glibc reads tunables once, when a process starts, so `reexec_with_hugepages` (called first thing
by main.py) restarts the process with GLIBC_TUNABLES extended. Set BIT_DIFFUSION_HUGEPAGES=0 to
opt out. This module must not import jax (it runs before jax allocates anything).
"""

import os
import platform
import sys
from collections.abc import Mapping
from typing import Optional

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT_VARIABLE = 'BIT_DIFFUSION_HUGEPAGES'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def transparent_hugepage_mode(path: str = _THP_SETTING) -> Optional[str]:
  """The kernel's THP mode ('always', 'madvise' or 'never'), or None where it cannot be read."""
  try:
    with open(path) as setting:
      text = setting.read()
  except OSError:
    return None
  for word in text.split():
    if word.startswith('[') and word.endswith(']'):
      return word[1:-1]
  return None


def environment_with_hugepages(environ: Mapping[str, str], *, libc: Optional[str] = None,
                               thp_mode: Optional[str] = None) -> Optional[dict[str, str]]:
  """`environ` with TUNABLE added to GLIBC_TUNABLES, or None when it would change nothing.

  None when: opted out (BIT_DIFFUSION_HUGEPAGES=0), the C library is not glibc, the kernel has
  no transparent huge pages (mode 'never' or unreadable), or GLIBC_TUNABLES already sets
  glibc.malloc.hugetlb (the user's value is kept). `libc` and `thp_mode` default to this host's.
  """
  if environ.get(OPT_OUT_VARIABLE, '1') == '0':
    return None
  libc = platform.libc_ver()[0] if libc is None else libc
  thp_mode = transparent_hugepage_mode() if thp_mode is None else thp_mode
  if libc != 'glibc' or thp_mode not in ('always', 'madvise'):
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return None
  environment = dict(environ)
  environment['GLIBC_TUNABLES'] = f'{tunables}:{TUNABLE}' if tunables else TUNABLE
  return environment


def reexec_with_hugepages() -> None:
  """Restarts this Python process with TUNABLE set, if `environment_with_hugepages` says so.

  Does not return when it restarts (os.execve keeps the process id and open files); returns
  at once otherwise. Call it before importing jax.
  """
  environment = environment_with_hugepages(os.environ)
  if environment is None:
    return
  argv = list(getattr(sys, 'orig_argv', [])) or [sys.executable] + sys.argv
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + argv[1:], environment)
