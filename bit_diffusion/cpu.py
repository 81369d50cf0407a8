"""CPU-only speed-ups, in one place: huge pages for XLA's buffers and YNNPACK kernel choices.

None of this changes a result beyond float rounding, and none of it does anything on GPU or TPU.
Two entry points:
  * `reexec_with_hugepages()`: called first thing by main.py (and the benchmarks), before jax
    is imported. It restarts the process once with glibc's transparent-huge-page tunable.
  * `compiler_options(config.cpu)`: the XLA options that the engine jits its train step with
    and every method its sampler (`jit(fn, config.cpu)`; None off CPU);
    `init_compiler_options()`: those of the one-off initialiser.
`machine_report()` says which CPU a measurement came from (model, vector instruction sets, the
XLA flags that restrict them), for the benchmarks' reports.
The config group `config.cpu` holds the knobs (`ynn_fusions`, `sampler_microbatch_size`); the
measurements behind each choice are in docs/cpu.md.

Huge pages: XLA:CPU allocates each execution's temporary buffer with `posix_memalign`; glibc
maps a block that large with a fresh `mmap` and unmaps it on free, so every step faulted it in
again 4 KiB at a time. glibc's tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35) makes malloc
advise the kernel to back its mappings with transparent huge pages where the kernel allows it
(/sys/kernel/mm/transparent_hugepage/enabled is `madvise` or `always`). glibc reads tunables
once, at start-up, hence the restart. BIT_DIFFUSION_HUGEPAGES=0 opts out. This module imports
jax only inside functions (the restart must happen before jax allocates anything).
"""

import functools
import gc
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any
from typing import Callable
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


# Python's cyclic garbage collector thresholds while JAX traces (Python's defaults: 700, 10, 10).
GC_THRESHOLDS = (10_000, 20, 10)


def collect_garbage_less_often() -> None:
  """Runs Python's cyclic garbage collector less often (GC_THRESHOLDS), for processes that trace
  JAX functions: tracing allocates millions of short-lived objects, and with Python's defaults
  the collections took 5 to 9% of a process's time (a 2-step main.py run of a 2-stage
  256-channel U-Net: 1.76 of 31 s, then 0.41 s; the tests: docs/benchmarks.md). Memory freed
  without cycles is freed at once either way; cyclic garbage waits a little longer.
  """
  gc.set_threshold(*GC_THRESHOLDS)


# The kinds of YNNPACK fusion (XLA:CPU's kernel library) that cpu.ynn_fusions may name.
YNN_FUSION_KINDS = ('INDIVIDUAL_CONVOLUTION', 'INDIVIDUAL_DOT', 'DOT', 'REDUCE', 'ELTWISE')


def ynn_fusion_kinds(text: str) -> list[str]:
  """'INDIVIDUAL_DOT, eltwise' -> ['INDIVIDUAL_DOT', 'ELTWISE']; unknown kinds raise ValueError."""
  kinds = [kind.strip().upper() for kind in text.split(',') if kind.strip()]
  unknown = [kind for kind in kinds if kind not in YNN_FUSION_KINDS]
  if unknown:
    raise ValueError(f'cpu.ynn_fusions={text!r} names {unknown}; choose from '
                     f'{YNN_FUSION_KINDS}, comma-separated, or \'\' for XLA\'s defaults.')
  return kinds


def compiler_options(cpu_config) -> Optional[dict[str, str]]:
  """XLA compiler options for the jitted train step and samplers (None: XLA's defaults).

  On CPU, `cpu_config.ynn_fusions` lists what YNNPACK runs; the rest goes to XLA's own kernels
  (Eigen convolutions, generated loops). '' keeps XLA's defaults
  ('INDIVIDUAL_CONVOLUTION,INDIVIDUAL_DOT,REDUCE'). Ignored on GPU and TPU.
  """
  import jax  # Not at module level: see the module docstring.

  kinds = ynn_fusion_kinds(cpu_config.ynn_fusions)
  if jax.default_backend() != 'cpu' or not kinds:
    return None
  return {'xla_cpu_experimental_ynn_fusion_type':
          ','.join('LIBRARY_FUSION_TYPE_' + kind for kind in kinds)}


def jit(fn: Callable[..., Any], cpu_config, **jit_kwargs) -> Callable[..., Any]:
  """`jax.jit(fn, **jit_kwargs)` with `compiler_options(cpu_config)` when called at top level.

  JAX refuses compiler options on a jit nested in another trace (a caller's own jit, vmap or
  make_jaxpr); there the returned function runs the plain jit, which the outer computation
  compiles with its own options. `.lower`, `.trace` and `.eval_shape` are the top-level jit's;
  `.tuned` and `.plain` are the two jits. `cpu_config=None` (as '' for `ynn_fusions`) keeps
  XLA's defaults: the plain `jax.jit`.
  """
  import jax  # Not at module level: see the module docstring.

  options = None if cpu_config is None else compiler_options(cpu_config)
  plain = jax.jit(fn, **jit_kwargs)
  if options is None:
    return plain
  tuned = jax.jit(fn, compiler_options=options, **jit_kwargs)

  @functools.wraps(fn)
  def call(*args, **kwargs):
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs)))
    return (plain if traced else tuned)(*args, **kwargs)
  call.lower, call.trace, call.eval_shape = tuned.lower, tuned.trace, tuned.eval_shape
  call.tuned, call.plain = tuned, plain
  return call


def init_compiler_options() -> Optional[dict[str, int]]:
  """XLA options for functions that run once, such as the parameter initialiser (None off CPU).

  XLA:CPU's LLVM optimisation of the initialiser's random-number code is most of its compile
  time (digits U-Net on a 2-core AVX2 CPU: 26 s optimised, 7 s at level 0, for a function that
  then runs once in 50 ms). At level 0 the parameters equal the optimised ones up to float
  rounding (2 of 648 arrays differ, by 1 ulp).
  """
  import jax  # Not at module level: see the module docstring.

  if jax.default_backend() != 'cpu':
    return None
  return {'xla_backend_optimization_level': 0}


# Vector instruction-set flags of /proc/cpuinfo that decide XLA:CPU's and its kernels' speed.
VECTOR_ISA_FLAGS = ('sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl',
                    'avx512_vnni', 'avx512_bf16', 'amx_tile')


def machine_report(cpuinfo_path: str = '/proc/cpuinfo',
                   environ: Optional[Mapping[str, str]] = None) -> dict[str, object]:
  """The CPU a measurement ran on and the XLA flags it ran with.

  Returns {'cpu_model', 'vector_isa' (the VECTOR_ISA_FLAGS the CPU has), 'widest_isa' ('AVX512',
  'AVX2', 'AVX', 'SSE4_2' or None), 'xla_flags' ($XLA_FLAGS), 'xla_cpu_max_isa' (the value of
  --xla_cpu_max_isa in it, e.g. 'AVX2' when emulating an AVX2-only machine; None: unrestricted)}.
  `--xla_cpu_max_isa` restricts XLA's generated code only; kernel libraries (YNNPACK, oneDNN,
  Eigen's dispatch) may still use wider instructions at run time.
  """
  environ = os.environ if environ is None else environ
  model, flags = None, set()
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and model is None:
          model = value.strip()
        elif key.strip() == 'flags' and not flags:
          flags = set(value.split())
  except OSError:
    pass
  vector_isa = [flag for flag in VECTOR_ISA_FLAGS if flag in flags]
  widest = next((name for flag, name in (('avx512f', 'AVX512'), ('avx2', 'AVX2'), ('avx', 'AVX'),
                                          ('sse4_2', 'SSE4_2')) if flag in flags), None)
  xla_flags = environ.get('XLA_FLAGS', '')
  max_isa = None
  for flag in xla_flags.split():
    if flag.startswith('--xla_cpu_max_isa='):
      max_isa = flag.split('=', 1)[1].upper()
  return {'cpu_model': model or platform.processor() or None, 'vector_isa': vector_isa,
          'widest_isa': widest, 'xla_flags': xla_flags, 'xla_cpu_max_isa': max_isa}
