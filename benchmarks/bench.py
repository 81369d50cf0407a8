"""Benchmarks of the train step and the sampler: speed, XLA FLOPs, compile time and peak memory.

  make bench                                  (= .venv/bin/python benchmarks/bench.py)
  .venv/bin/python benchmarks/bench.py --quick --cases=digits --output=/tmp/bench.json
  .venv/bin/python benchmarks/bench.py --override=cifar10_small.model.base_channels=128

Cases (each runs in a fresh subprocess, so peak memory and compile times are per case):
  digits            configs/digits.py as is (the demo: batch 32; sampling 100 images per batch).
  cifar10_small     configs/cifar10.py at CPU width: base_channels=64, num_res_blocks=2, batch 8.
  imagenet64_shape  configs/imagenet64.py at batch 2: parameter count, and the lowering, compile
                    and XLA FLOPs of one train step, with nothing allocated; `--full` also
                    allocates and times it (for an accelerator).

Training runs the engine's train step (bit_diffusion/engine.py, the config's task and method) on
synthetic integer batches (numpy, the data's shape and value range) fed through
`Engine.global_batch`, from `Engine.init_state`. Sampling is the method's sampler
(`method.make_sample_fn`), DDIM with 100 steps (the config's `sampling` section otherwise) on
`config.sampling.batch_size` images. Step times are medians over timed steps after warm-up,
each ended by `jax.block_until_ready`.

Compile seconds are the time of `.compile()` on the lowered function. Each case's first subprocess
compiles with JAX's persistent compilation cache on, in a new empty directory (so its compiles are
cold, `compile_seconds_cold`, and include writing the cache); a second subprocess then only lowers
and compiles the same functions with that cache populated (`compile_seconds_warm`), as a restarted
training does (training keeps the cache under its workdir). With `--warm-cache` the first
subprocess uses `--cache-dir` as it is: `compile_seconds_cold` is then null.

FLOPs come from XLA's cost analysis. XLA counts the body of a while loop once, so the sampler's
FLOPs are `steps` times those of the lowered one-step sampler (one network evaluation plus the
negligible noise and decoding). XLA counts every op (elementwise, normalisation, the optimizer,
...). `conv_dot_flops_*` count only convolutions and matrix products (2 multiply-adds per output
element and reduced input element, from the traced jaxpr: forward, backward and the
self-conditioning pass), as PyTorch's FLOP counter does; `conv_dot_gflops_per_sec` is their rate.

The hardware ceiling: `matmul_gflops_per_sec` is the median rate of a jitted float32
`--matmul-size` square matmul (2 n^3 FLOPs) in its own subprocess before the cases, and each timed
train step and sampler reports `mfu_vs_matmul` (XLA's FLOPs) and `conv_dot_mfu_vs_matmul`
(convolutions and matrix products), its achieved GFLOP/s over that ceiling.

Run as a script, it restarts itself with glibc's transparent-huge-page tunable, as main.py does
(bit_diffusion/cpu.py; BIT_DIFFUSION_HUGEPAGES=0 opts out), and its subprocesses inherit
it; the report records `glibc_tunables`.

Prints one JSON object to stdout (logs go to stderr); `--output=PATH` also writes it to PATH.
"""

import argparse
import collections
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any
from typing import Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import timing  # noqa: E402  (benchmarks/, beside this file)

from bit_diffusion import config_overrides  # noqa: E402  (ml_collections only)
from bit_diffusion import cpu  # noqa: E402  (imports no jax at module level)

CASES = ('digits', 'cifar10_small', 'imagenet64_shape')
SHAPE_ONLY_CASES = ('imagenet64_shape',)  # Timed only with --full.
SAMPLER = 'ddim'
MATMUL_CHILD = 'matmul'  # --child value of the dense-matmul ceiling's subprocess.


def _log(message: str) -> None:
  stamp = datetime.datetime.now().strftime('%H:%M:%S')
  print(f'[bench {stamp}] {message}', file=sys.stderr, flush=True)


def emit_report(report: dict[str, Any], output: str, log: Any = _log) -> None:
  """Prints the report as JSON to stdout and, if `output` is set, writes it there too."""
  text = json.dumps(report, indent=2)
  print(text)
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
      f.write(text + '\n')
    log(f'wrote {output}')


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  """The command line, with the --quick defaults filled in and the cases in `case_list`."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
  parser.add_argument('--cases', default=','.join(CASES),
                      help=f'Comma-separated cases out of {",".join(CASES)}.')
  parser.add_argument('--output', default='', help='Also write the JSON to this file.')
  parser.add_argument('--quick', action='store_true',
                      help='Smoke test: 1 warm-up and 3 timed train steps, one sampling batch.')
  parser.add_argument('--tiny', action='store_true',
                      help='Shrink every model (configs/tiny.py tiny_unet: one 16-channel stage '
                      'of 1 block, no attention; batch <= 16); for tests of this script, not for '
                      'numbers.')
  parser.add_argument('--full', action='store_true',
                      help='Also allocate and time the shape-only cases (imagenet64_shape).')
  parser.add_argument('--warm-cache', action='store_true',
                      help='Use the persistent compilation cache in --cache-dir (warm compiles).')
  parser.add_argument('--cache-dir', default=os.path.join(tempfile.gettempdir(),
                                                          'bit_diffusion_bench_jax_cache'),
                      help='The compilation cache directory for --warm-cache.')
  parser.add_argument('--sample-steps', type=int, default=100, help='DDIM sampling steps.')
  parser.add_argument('--warmup-steps', type=int, default=None,
                      help='Untimed train steps after compiling (default 2; --quick 1).')
  parser.add_argument('--min-steps', type=int, default=None,
                      help='At least this many timed train steps (default 5; --quick 3).')
  parser.add_argument('--min-seconds', type=float, default=None,
                      help='Time train steps for at least this long (default 10; --quick 0).')
  parser.add_argument('--max-steps', type=int, default=50,
                      help='At most this many timed train steps.')
  parser.add_argument('--sample-repeats', type=int, default=None,
                      help='Timed sampling batches after the first call (default 2; --quick 1).')
  parser.add_argument('--imagenet64-batch', type=int, default=2,
                      help='Train and sampling batch of imagenet64_shape.')
  parser.add_argument('--matmul-size', type=int, default=None,
                      help='Side of the square float32 matmul of the hardware ceiling (default '
                      '4096; --tiny 1024; 0 skips it).')
  parser.add_argument('--matmul-repeats', type=int, default=None,
                      help='Timed matmuls, after one warm-up (default 7; --quick 3).')
  parser.add_argument('--no-warm-compile', action='store_true',
                      help='Skip the second subprocess per case that times warm-cache compiles.')
  parser.add_argument('--compile-only', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--override', action='append', default=[],
                      metavar='CASE.SECTION.FIELD=VALUE',
                      help='Change a config field of one case (repeatable), e.g. '
                      'cifar10_small.training.batch_size=16 or '
                      'cifar10_small.cpu.sampler_microbatch_size=4.')
  parser.add_argument('--child', default='', help=argparse.SUPPRESS)
  parser.add_argument('--result-file', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  quick = args.quick
  if args.warmup_steps is None:
    args.warmup_steps = 1 if quick else 2
  if args.min_steps is None:
    args.min_steps = 3 if quick else 5
  if args.min_seconds is None:
    args.min_seconds = 0.0 if quick else 10.0
  if args.sample_repeats is None:
    args.sample_repeats = 1 if quick else 2
  if args.matmul_size is None:
    args.matmul_size = 1024 if args.tiny else 4096
  if args.matmul_repeats is None:
    args.matmul_repeats = 3 if quick else 7
  args.max_steps = max(args.max_steps, args.min_steps)
  cases = [c.strip() for c in args.cases.split(',') if c.strip()]
  unknown = sorted(set(cases) - set(CASES))
  if unknown:
    parser.error(f'Unknown cases {unknown}; choose from {list(CASES)}.')
  args.case_list = cases
  for override in args.override:
    _parse_override(override, parser)
  return args


def _parse_override(text: str, parser: Optional[argparse.ArgumentParser] = None
                    ) -> tuple[str, str, Any]:
  """'case.section.field=value' -> (case, 'section.field', value): the text after the case is
  read by `config_overrides.parse` (the value a Python literal when it is one, else a string)."""
  case, _, rest = text.partition('.')
  try:
    if case not in CASES:
      raise ValueError(case)
    key, value = config_overrides.parse(rest)
  except ValueError:
    message = f'--override {text!r}: expected CASE.SECTION.FIELD=VALUE with CASE in {CASES}.'
    if parser is not None:
      parser.error(message)
    raise ValueError(message) from None
  return case, key, value


# ---------------------------------------------------------------------------------------------
# The child: one case in this process.
# ---------------------------------------------------------------------------------------------


def case_config(case: str, overrides: list[str] | tuple[str, ...] = ()):
  """The config of `case` with `overrides` ('section.field=value', as --override without the
  case's prefix) applied."""
  return build_config(case, parse_args([f'--override={case}.{o}' for o in overrides]))


def build_config(case: str, args: argparse.Namespace):
  """The config of `case`, with --tiny and --override applied."""
  from configs import cifar10
  from configs import digits
  from configs import imagenet64
  from configs import tiny

  if case == 'digits':
    config = digits.get_config()
  elif case == 'cifar10_small':
    config = cifar10.get_config()
    config.model.base_channels = 64
    config.model.num_res_blocks = 2
    config.model.channel_multipliers = (1, 1, 1)
    config.model.attention_resolutions = (16, 8)
    config.training.batch_size = 8
    config.sampling.batch_size = 8
  elif case == 'imagenet64_shape':
    config = imagenet64.get_config()
    config.training.batch_size = args.imagenet64_batch
    config.sampling.batch_size = args.imagenet64_batch
  else:
    raise ValueError(f'Unknown case {case!r}.')
  config.sampling.sampler = SAMPLER
  config.sampling.steps = args.sample_steps
  if args.tiny:
    config = tiny.tiny_unet(config)
    config.training.batch_size = min(config.training.batch_size, 16)
    config.sampling.batch_size = min(config.sampling.batch_size, 16)
  overrides = {}
  for override in args.override:
    override_case, key, value = _parse_override(override)
    if override_case == case:
      overrides[key] = value
  return config_overrides.apply(config, overrides)


def _cost_flops(analysis: Any) -> Optional[float]:
  """'flops' of a cost analysis (a dict, or a list of dicts in older JAX), or None."""
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis:
    return None
  flops = analysis.get('flops')
  return float(flops) if flops is not None and flops > 0 else None


def conv_dot_flops(jaxpr) -> tuple[float, int]:
  """FLOPs of the convolutions and matrix products in a (closed) jaxpr, and its while loops.

  2 per multiply-add: 2 * output elements * reduced elements per output (the contracting dims of
  a `dot_general`; the kernel's input features and window of a `conv_general_dilated`). Nested
  jaxprs (jit, custom_jvp/vjp, remat) count once, `scan` bodies `length` times, the largest
  `cond` branch, and `while` bodies once (their count is returned, for the caller to scale).
  """
  import math
  total, whiles = 0.0, 0
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    out_elements = sum(math.prod(v.aval.shape) for v in eqn.outvars)
    if name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      lhs_shape = eqn.invars[0].aval.shape
      total += 2.0 * out_elements * math.prod(lhs_shape[d] for d in lhs_contract)
      continue
    if name == 'conv_general_dilated':
      rhs_spec = eqn.params['dimension_numbers'].rhs_spec  # (out features, in features, window).
      rhs_shape = eqn.invars[1].aval.shape
      total += 2.0 * out_elements * math.prod(rhs_shape[d] for d in rhs_spec[1:])
      continue
    if name == 'while':
      whiles += 1
    sub_totals = []
    for key, value in eqn.params.items():
      values = value if isinstance(value, (list, tuple)) else (value,)
      for sub in values:
        if hasattr(sub, 'eqns') or hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
          flops, sub_whiles = conv_dot_flops(sub)
          whiles += sub_whiles
          sub_totals.append((key, flops))
    if name == 'cond':
      total += max((f for _, f in sub_totals), default=0.0)
    elif name == 'scan':
      total += eqn.params['length'] * sum(f for _, f in sub_totals)
    elif name == 'while':
      total += sum(f for key, f in sub_totals if key == 'body_jaxpr')
    else:
      total += sum(f for _, f in sub_totals)
  return total, whiles


def _memory_analysis(compiled) -> Optional[dict[str, float]]:
  """XLA's static buffer sizes of a compiled function, in MiB."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # Not every backend implements it.
    return None
  if stats is None:
    return None
  fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
            'temp_size_in_bytes', 'generated_code_size_in_bytes')
  return {name.replace('_size_in_bytes', '_mib'): getattr(stats, name) / 2**20
          for name in fields if hasattr(stats, name)}


def _abstract(tree, shardings):
  """ShapeDtypeStructs with shardings for a pytree of arrays (or ShapeDtypeStructs)."""
  import jax
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree,
                      shardings)


def synthetic_batches(config, count: int, seed: int = 0) -> list[dict[str, Any]]:
  """`count` process-local batches of integer images in [0, 2**num_bits) and labels."""
  import jax
  import numpy as np
  data = config.data
  local = config.training.batch_size // jax.process_count()
  rng = np.random.default_rng(seed + jax.process_index())
  shape = (local, data.image_size, data.image_size, data.channels)
  return [{'images': rng.integers(0, 2**data.num_bits, shape, dtype=np.int32),
           'labels': rng.integers(0, max(1, data.num_classes), (local,), dtype=np.int32)}
          for _ in range(count)]


def bench_train(engine, timed: bool, args: argparse.Namespace) -> dict[str, Any]:
  """Compile (and unless shape-only, time) `engine.train_step` on synthetic batches."""
  import jax

  from bit_diffusion import engine as engine_lib

  config = engine.config
  batch_size = config.training.batch_size
  result: dict[str, Any] = {'batch_size': batch_size}
  batches = synthetic_batches(config, 2)
  if timed:
    start = time.perf_counter()
    state = jax.block_until_ready(engine.init_state(engine_lib.seed_key(config.seed, 'init')))
    result['init_seconds'] = time.perf_counter() - start
    state_arg = state
    batch_arg = engine.global_batch(batches[0])
  else:
    state_arg = _abstract(engine.abstract_state, engine.state_sharding)
    batch_arg = _abstract({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in
                           batches[0].items()},
                          {k: engine.batch_sharding for k in batches[0]})
  _log(f'  train step: lowering and compiling (batch {batch_size})')
  start = time.perf_counter()
  traced = engine.train_step.trace(state_arg, batch_arg)
  lowered = traced.lower()
  result['lower_seconds'] = time.perf_counter() - start
  conv_dot, _ = conv_dot_flops(traced.jaxpr)
  result['conv_dot_flops_per_step'] = conv_dot
  del traced
  start = time.perf_counter()
  compiled = lowered.compile()
  result['compile_seconds'] = time.perf_counter() - start
  flops = _cost_flops(compiled.cost_analysis())
  result['flops_per_step'] = flops
  result['flops_per_image'] = flops / batch_size if flops else None
  result['xla_memory'] = _memory_analysis(compiled)
  _log(f'  train step: lower {result["lower_seconds"]:.1f} s, compile '
       f'{result["compile_seconds"]:.1f} s, {(flops or 0) / 1e9:.2f} GFLOP per step')
  del compiled, lowered
  if not timed:
    return result
  if args.compile_only:  # The warm-cache compile: the same lowering, nothing run.
    result['_state'] = state
    return result

  def step(state, i):
    state, metrics = engine.train_step(state, engine.global_batch(batches[i % len(batches)]))
    return jax.block_until_ready((state, metrics))[0]

  start = time.perf_counter()
  state = step(state, 0)  # Dispatch set-up; the executable is the one compiled above.
  result['first_step_seconds'] = time.perf_counter() - start
  for i in range(args.warmup_steps):
    state = step(state, i + 1)
  def timed_step(i):
    nonlocal state
    state = step(state, i)

  times = timing.timed_calls(timed_step, min_steps=args.min_steps, min_seconds=args.min_seconds,
                             max_steps=args.max_steps)
  median = statistics.median(times)
  result.update(
      timed_steps=len(times), warmup_steps=args.warmup_steps, step_seconds_median=median,
      step_seconds_min=min(times), step_seconds_max=max(times), steps_per_sec=1.0 / median,
      images_per_sec=batch_size / median,
      gflops_per_sec=flops / median / 1e9 if flops else None,
      conv_dot_gflops_per_sec=conv_dot / median / 1e9)
  _log(f'  train step: {median * 1e3:.1f} ms median over {len(times)} steps, '
       f'{batch_size / median:.1f} images/s')
  result['_state'] = state  # Handed to the sampler (its EMA params), removed before output.
  return result


def bench_sampling(engine, state, timed: bool, args: argparse.Namespace) -> dict[str, Any]:
  """Compile and time one batch of the method's jitted sampler (`method.make_sample_fn`)."""
  import jax
  import jax.numpy as jnp

  from bit_diffusion import engine as engine_lib
  from bit_diffusion import generation

  config = engine.config
  batch_size = config.sampling.batch_size
  steps = config.sampling.steps
  result: dict[str, Any] = {'sampler': config.sampling.sampler, 'steps': steps,
                            'batch_size': batch_size, 'guidance': config.sampling.guidance}
  labels = engine.method.task.sampling_conditions(batch_size)
  if timed:
    params = state.ema_params
  else:
    params = _abstract(engine.abstract_state.ema_params,
                       engine.state_sharding.ema_params)
  if timed:
    labels_arg = jnp.asarray(labels, jnp.int32)  # As `generation.generate` passes them.
  else:
    labels_arg = jax.ShapeDtypeStruct(labels.shape, jnp.int32, sharding=engine.batch_sharding)
  rng = engine_lib.seed_key(config.seed, 'sample')
  if args.compile_only and not timed:
    return result
  if args.compile_only:
    _compile_sampler(engine, params, rng, labels_arg, result)
    return result

  # XLA counts a while loop's body once: FLOPs of one network evaluation from a 1-step sampler.
  one_step = engine.method.make_sample_fn(engine.graphdef, engine.mesh, steps=1)
  traced = one_step.trace(params, rng, labels_arg)
  per_eval = _cost_flops(traced.lower().cost_analysis())
  result['flops_per_network_eval'] = per_eval
  conv_dot, whiles = conv_dot_flops(traced.jaxpr)  # A 1-step fori_loop: a scan of length 1.
  result['conv_dot_flops_per_network_eval'] = conv_dot
  result['conv_dot_flops_per_batch'] = conv_dot * steps
  if whiles:
    _log(f'  sampler: {whiles} while loop(s) in the jaxpr, each body counted once')
  flops = per_eval * steps if per_eval else None
  result['flops_per_batch'] = flops
  result['flops_per_image'] = flops / batch_size if flops else None
  if not timed:
    return result

  sample_fn = _compile_sampler(engine, params, rng, labels_arg, result)

  def run(i):
    start = time.perf_counter()
    images = generation.generate(sample_fn, params, jax.random.fold_in(rng, i), labels,
                                 batch_size)
    assert images.shape[0] == batch_size
    return time.perf_counter() - start

  result['first_call_seconds'] = run(0)
  times = [run(i + 1) for i in range(args.sample_repeats)]
  median = statistics.median(times)
  result.update(
      timed_batches=len(times), batch_seconds_median=median, batch_seconds_all=times,
      images_per_sec=batch_size / median,
      gflops_per_sec=flops / median / 1e9 if flops else None,
      conv_dot_gflops_per_sec=conv_dot * steps / median / 1e9)
  _log(f'  sampler: compile {result["compile_seconds"]:.1f} s, {median:.2f} s per batch, '
       f'{batch_size / median:.2f} images/s')
  return result


def _compile_sampler(engine, params, rng, labels_arg, result: dict[str, Any]):
  """Lowers and compiles the full sampler into `result` (seconds, memory); returns the jitted."""
  config = engine.config
  sample_fn = engine.method.make_sample_fn(engine.graphdef, engine.mesh)
  _log(f'  sampler: lowering and compiling ({config.sampling.steps} {config.sampling.sampler} '
       f'steps, batch {config.sampling.batch_size})')
  start = time.perf_counter()
  lowered = sample_fn.lower(params, rng, labels_arg)
  result['lower_seconds'] = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  result['compile_seconds'] = time.perf_counter() - start
  result['xla_memory'] = _memory_analysis(compiled)
  del compiled, lowered
  return sample_fn


def bench_matmul(size: int, repeats: int) -> dict[str, Any]:
  """The hardware ceiling: GFLOP/s of a jitted float32 `size` x `size` matmul (2 size^3 FLOPs)."""
  import jax
  import jax.numpy as jnp

  jax.config.update('jax_enable_compilation_cache', False)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  a, b = (jax.random.normal(k, (size, size), jnp.float32) for k in keys)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))  # Compile and warm up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  flops = 2.0 * size**3
  devices = jax.devices()
  _log(f'matmul {size}x{size} float32: {median * 1e3:.1f} ms median, '
       f'{flops / median / 1e9:.1f} GFLOP/s')
  return {'size': size, 'dtype': 'float32', 'repeats': repeats, 'flops': flops,
          'seconds_median': median, 'seconds_min': min(times), 'seconds_all': times,
          'gflops_per_sec': flops / median / 1e9, 'gflops_per_sec_best': flops / min(times) / 1e9,
          'device': {'platform': devices[0].platform, 'device_kind': devices[0].device_kind},
          'load_avg': list(os.getloadavg())}


def _config_summary(config) -> dict[str, Any]:
  """The config fields that set the cost of a step."""
  return {
      'image_shape': [config.data.image_size, config.data.image_size, config.data.channels],
      'num_bits': config.data.num_bits,
      'class_conditional': config.data.class_conditional,
      'base_channels': config.model.base_channels,
      'channel_multipliers': list(config.model.channel_multipliers),
      'num_res_blocks': config.model.num_res_blocks,
      'attention_resolutions': list(config.model.attention_resolutions),
      'head_dim': config.model.head_dim,
      'compute_dtype': config.training.compute_dtype,
  }


def _rss_mib() -> float:
  """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == 'darwin' else peak / 2**10


def run_child(case: str, args: argparse.Namespace) -> dict[str, Any]:
  """Runs one case in this (fresh) process and returns its results."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import jax

  if args.cache_dir:
    jax.config.update('jax_enable_compilation_cache', True)
    jax.config.update('jax_compilation_cache_dir', args.cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  else:
    jax.config.update('jax_enable_compilation_cache', False)
  from bit_diffusion import engine as engine_lib
  from bit_diffusion import methods

  start_all = time.perf_counter()
  devices = jax.devices()
  result: dict[str, Any] = {
      'device': {'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
                 'device_count': len(devices), 'process_count': jax.process_count()},
      'load_avg_start': list(os.getloadavg()),
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
      'rss_after_import_mib': _rss_mib(),
  }
  config = build_config(case, args)
  timed = case not in SHAPE_ONLY_CASES or args.full
  result['timed'] = timed
  result['compile_only'] = args.compile_only
  result['config'] = _config_summary(config)
  _log(f'{case}: building the engine')
  method = methods.create(config)
  engine_lib.check_config(config, method, jax.device_count(), jax.process_count())
  engine = engine_lib.Engine(config, method)
  result['num_params'] = int(engine.num_params)
  _log(f'  {engine.num_params:,} parameters on {len(devices)} {devices[0].device_kind}')
  train_result = bench_train(engine, timed, args)
  state = train_result.pop('_state', None)
  result['train'] = train_result
  result['sampling'] = bench_sampling(engine, state, timed, args)
  del state
  result['peak_rss_mib'] = _rss_mib()
  stats = devices[0].memory_stats()
  result['device_peak_mib'] = (stats['peak_bytes_in_use'] / 2**20
                               if stats and 'peak_bytes_in_use' in stats else None)
  result['load_avg_end'] = list(os.getloadavg())
  result['case_seconds'] = time.perf_counter() - start_all
  result['versions'] = _versions()
  return result


def _versions() -> dict[str, str]:
  """Versions of Python and the numeric packages."""
  import importlib.metadata
  versions = {'python': platform.python_version()}
  for package in ('jax', 'jaxlib', 'flax', 'optax', 'numpy'):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


# ---------------------------------------------------------------------------------------------
# The parent: one subprocess per case, then one JSON object.
# ---------------------------------------------------------------------------------------------


def _git_revision() -> Optional[str]:
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain'], cwd=REPO_ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ('-dirty' if dirty else '')


def _shorter_path(path: str) -> str:
  """`path` relative to the working directory when it lies inside it."""
  relative = os.path.relpath(path)
  return path if relative.startswith('..') else relative


def _child_argv(args: argparse.Namespace, cache_dir: str) -> list[str]:
  """The options of `args` that a case's subprocess needs; it compiles with `cache_dir`."""
  argv = [f'--sample-steps={args.sample_steps}', f'--warmup-steps={args.warmup_steps}',
          f'--min-steps={args.min_steps}', f'--min-seconds={args.min_seconds}',
          f'--max-steps={args.max_steps}', f'--sample-repeats={args.sample_repeats}',
          f'--imagenet64-batch={args.imagenet64_batch}', f'--cache-dir={cache_dir}',
          f'--matmul-size={args.matmul_size}', f'--matmul-repeats={args.matmul_repeats}']
  argv += [f'--{name}' for name in ('quick', 'tiny', 'full') if getattr(args, name)]
  return argv + [f'--override={override}' for override in args.override]


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
  """One case: a timed subprocess (cold compiles), then a compile-only one (warm cache)."""
  with tempfile.TemporaryDirectory(prefix='bench_jax_cache_') as fresh_dir:
    cache_dir = args.cache_dir if args.warm_cache else fresh_dir
    result = run_case_subprocess(case, _child_argv(args, cache_dir))
    if 'error' in result or args.no_warm_compile:
      return result
    _log(f'case {case}: compiling again with the persistent cache warm')
    warm = run_case_subprocess(case, _child_argv(args, cache_dir) + ['--compile-only'])
  result['warm_compile'] = {'subprocess_seconds': warm['subprocess_seconds']}
  if 'error' in warm:
    result['warm_compile'].update(error=warm['error'], log_tail=warm['log_tail'])
    return result
  for section in ('train', 'sampling'):
    if 'compile_seconds' not in result[section]:
      continue
    result[section]['compile_seconds_cold'] = (None if args.warm_cache else
                                               result[section]['compile_seconds'])
    result[section]['compile_seconds_warm'] = warm[section].get('compile_seconds')
  return result


def _add_mfu(case_result: dict[str, Any], matmul_gflops: Optional[float]) -> None:
  """Adds the achieved GFLOP/s over the matmul's to the timed sections: `mfu_vs_matmul` (XLA's
  FLOPs) and `conv_dot_mfu_vs_matmul` (convolutions and matrix products only, as PyTorch counts).
  """
  for section in ('train', 'sampling'):
    for rate, name in (('gflops_per_sec', 'mfu_vs_matmul'),
                       ('conv_dot_gflops_per_sec', 'conv_dot_mfu_vs_matmul')):
      achieved = case_result.get(section, {}).get(rate)
      if achieved and matmul_gflops:
        case_result[section][name] = achieved / matmul_gflops


def run_case_subprocess(case: str, argv: list[str]) -> dict[str, Any]:
  """Runs `case` in a fresh interpreter; returns its results or an 'error' entry."""
  with tempfile.TemporaryDirectory() as tmp:
    result_file = os.path.join(tmp, 'result.json')
    command = [sys.executable, os.path.abspath(__file__), *argv, f'--child={case}',
               f'--result-file={result_file}']
    start = time.perf_counter()
    # The child's output is forwarded to stderr (stdout carries only the JSON) as it comes.
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log_tail = collections.deque(maxlen=5)
    for line in process.stdout:
      sys.stderr.write(line)
      if line.strip():
        log_tail.append(line.rstrip())
    returncode = process.wait()
    seconds = time.perf_counter() - start
    if returncode or not os.path.exists(result_file):
      return {'error': f'the subprocess exited with code {returncode}', 'log_tail': list(log_tail),
              'subprocess_seconds': seconds}
    with open(result_file) as f:
      result = json.load(f)
  result['subprocess_seconds'] = seconds
  return result


def report_header(argv: list[str], log) -> dict[str, Any]:
  """Where and how a benchmark ran (bench.py and bench_peer.py): command, date, git revision,
  host, CPUs, load, glibc tunables and the machine (CPU model, vector instruction sets,
  XLA_FLAGS such as --xla_cpu_max_isa=AVX2); the machine also goes to `log`."""
  machine = cpu.machine_report()
  log(f"machine: {machine['cpu_model']}, {'/'.join(machine['vector_isa']).upper()}, "
      f"XLA_FLAGS={machine['xla_flags']!r}")
  return {
      'command': shlex.join([_shorter_path(sys.executable), sys.argv[0], *argv]),
      'cwd': os.getcwd(),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'git_revision': _git_revision(),
      'hostname': platform.node(),
      'cpu_count': os.cpu_count(),
      'cpus_available': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
      'load_avg_start': list(os.getloadavg()),
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
      'machine': machine,
  }


def main(argv: Optional[list[str]] = None) -> int:
  """Runs the cases (or, with --child, one case); returns the exit status."""
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.child:
    if args.child == MATMUL_CHILD:
      result = bench_matmul(args.matmul_size, args.matmul_repeats)
    else:
      result = run_child(args.child, args)
    with open(args.result_file, 'w') as f:
      json.dump(result, f)
    return 0

  start = time.perf_counter()
  report = report_header(argv, _log)
  report['options'] = {'quick': args.quick, 'tiny': args.tiny, 'full': args.full,
                       'warm_cache': args.warm_cache, 'warm_compile': not args.no_warm_compile,
                       'matmul_size': args.matmul_size, 'sample_steps': args.sample_steps,
                       'sampler': SAMPLER, 'overrides': args.override}
  report['cases'] = {}
  report['matmul'] = None
  report['matmul_gflops_per_sec'] = None
  if args.matmul_size > 0:
    _log(f'the ceiling: a {args.matmul_size}x{args.matmul_size} float32 matmul in a subprocess')
    matmul = run_case_subprocess(MATMUL_CHILD, _child_argv(args, ''))
    report['matmul'] = matmul
    report['matmul_gflops_per_sec'] = matmul.get('gflops_per_sec')
  for case in args.case_list:
    _log(f'case {case}: starting a subprocess')
    report['cases'][case] = run_case(case, args)
    _add_mfu(report['cases'][case], report['matmul_gflops_per_sec'])
  first = next((r for r in report['cases'].values() if 'error' not in r), None)
  if first is not None:
    report['device'] = first['device']
    report['versions'] = first['versions']
  report['load_avg_end'] = list(os.getloadavg())
  report['total_seconds'] = time.perf_counter() - start

  emit_report(report, args.output, _log)
  failed = [case for case, r in report['cases'].items()
            if 'error' in r or 'error' in r.get('warm_compile', {})]
  if report['matmul'] is not None and 'error' in report['matmul']:
    failed.append(MATMUL_CHILD)
  if failed:
    _log(f'failed cases: {failed}')
    return 1
  return 0


if __name__ == '__main__':
  # As main.py: glibc's transparent-huge-page tunable (bit_diffusion/cpu.py), inherited
  # by every subprocess.
  cpu.reexec_with_hugepages()
  sys.exit(main())
