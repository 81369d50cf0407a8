"""Side by side: ours, our U-Net in PyTorch, and the PyTorch port; train step and sampler.

  make bench-peer                       (creates .venv-peer first: CPU torch 2.13.0 and the port)
  make bench-peer ARGS=--quick          (smoke test: batch 8, 5 sampling steps, few train steps)
  make bench-peer ARGS=--check-same-network   (only the check that the two U-Nets are the same)
  .venv/bin/python benchmarks/bench_peer.py --peer-python=.venv-peer/bin/python --output=x.json

Same network: our U-Net at the size below (the 35.2M config of ours) transcribed to PyTorch
(benchmarks/unet_torch.py), run by benchmarks/same_network_torch.py eagerly and with
`torch.compile`: our train step (loss, self-conditioning, Adam, clipping, EMA) and our DDIM
sampler with self-conditioning, against ours, at the same batch sizes. First, before any timing,
benchmarks/same_network.py checks that it is the same network (`--check-sizes`: equal parameter
counts, our parameters loaded by name, outputs within 1e-4); the timing is skipped if it fails.
The rates are images/s and ours / the faster PyTorch variant; the sampler's are given at 100
steps, scaled from the `--sample-steps` timed (`sampler_steps_timed`).

Both sides: 32x32x3 8-bit images, unconditional, float32, on this machine in one run, at batch 8
and 32 (`--batch-sizes`); the train step with self-conditioning at rate 0.5 and the 100-step DDIM
sampler with self-conditioning.

The port (benchmarks/peer_torch.py, run by `--peer-python` in isolated mode): its default
`Unet(dim=64)` (dim_mults 1, 2, 4, 8; 36.4M parameters) in `BitDiffusion`, Adam; it
self-conditions a whole batch with probability 0.5 per step.

Ours (benchmarks/bench.py's case cifar10_small, one subprocess per batch size): configs/cifar10.py
at the same parameter count family, the DDPM CIFAR-10 layout: base_channels 128, channel
multipliers (1, 2, 2, 2), 2 blocks per stage, attention at 16x16 with one head over its 256
channels (35.2M parameters; `--ours` changes it). The one head (model.head_dim=256) is DDPM's
and that of every earlier run of this benchmark; the config's head_dim of 64 would give 4 heads
with the same parameters and FLOPs. It self-conditions half of every batch (the same expected
cost). With this CPU's fastest settings: the sampler evaluates the network on 4 images at a time
(cpu.sampler_microbatch_size, an ordinary config field that `--ours` can change back to 0); the
train step runs the whole batch in one pass.

Both sides run with glibc's transparent-huge-page tunable (GLIBC_TUNABLES=glibc.malloc.hugetlb=1,
see bit_diffusion/cpu.py): this script restarts itself with it, as main.py does, and its
subprocesses (ours and the port's) inherit it. BIT_DIFFUSION_HUGEPAGES=0 runs both without.

FLOPs, the same way on both sides: convolutions and matrix products only, 2 per multiply-add,
forward, backward and the self-conditioning pass; PyTorch's FlopCounterMode for the port, the
traced jaxpr for ours (`conv_dot_flops_*` in bench.py's output). XLA's cost analysis (which also
counts elementwise ops, normalisation and the optimizer) is reported beside ours as
`xla_gflops_per_sec`. The two networks differ, so FLOPs per image differ: compare achieved
GFLOP/s (how well each uses the CPU) and images/s (what a user gets) together.

Prints one JSON object to stdout (logs go to stderr), then a readable summary to stderr (also in
the JSON as `summary`); `--output=PATH` also writes the JSON.
"""

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any
from typing import Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO_ROOT, 'benchmarks', 'bench.py')
PEER = os.path.join(REPO_ROOT, 'benchmarks', 'peer_torch.py')
SAME_NETWORK = os.path.join(REPO_ROOT, 'benchmarks', 'same_network.py')
SAME_NETWORK_TORCH = os.path.join(REPO_ROOT, 'benchmarks', 'same_network_torch.py')
sys.path.insert(0, os.path.dirname(BENCH))
import bench  # noqa: E402  (no jax at import; its cases run in subprocesses)
import same_network_report  # noqa: E402
from bench import cpu  # noqa: E402

CASE = 'cifar10_small'
# configs/cifar10.py reduced to the port's parameter count family (35.2M against 36.4M).
OURS = ('model.base_channels=128', 'model.channel_multipliers=(1,2,2,2)',
        'model.num_res_blocks=2', 'model.attention_resolutions=(16,)',
        'model.head_dim=256',  # One head over 256 channels at 16x16, as DDPM and earlier runs.
        'data.class_conditional=False', 'diffusion.self_condition_rate=0.5')
SAMPLE_MICROBATCH = 4


def _log(message: str) -> None:
  stamp = datetime.datetime.now().strftime('%H:%M:%S')
  print(f'[bench-peer {stamp}] {message}', file=sys.stderr, flush=True)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  """The command line, with the --quick defaults filled in."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
  parser.add_argument('--peer-python', default=os.path.join(REPO_ROOT, '.venv-peer', 'bin',
                                                            'python'),
                      help='Python of the venv with torch and bit-diffusion (make bench-peer).')
  parser.add_argument('--batch-sizes', default=None, help='Comma-separated (default 8,32; '
                      '--quick 8).')
  parser.add_argument('--sample-steps', type=int, default=None,
                      help='Sampling steps (default 100; --quick 5).')
  parser.add_argument('--quick', action='store_true',
                      help='Smoke test: batch 8, 5 sampling steps, 2-3 timed train steps.')
  parser.add_argument('--matmul-size', type=int, default=None,
                      help='The dense-matmul ceiling, both sides (default 4096; --quick 2048).')
  parser.add_argument('--ours', action='append', default=[], metavar='SECTION.FIELD=VALUE',
                      help='Change our config further (repeatable), e.g. model.num_res_blocks=3.')
  parser.add_argument('--sample-repeats', type=int, default=None,
                      help='Timed sampling batches per side after the first (default 2; '
                      '--quick 1).')
  parser.add_argument('--check-same-network', action='store_true',
                      help='Only check that our U-Net and its PyTorch transcription are the same '
                      'network (--check-sizes), then stop.')
  parser.add_argument('--check-sizes', default='tiny,bench',
                      help="same_network.py's sizes checked before the timing (default "
                      'tiny,bench: a 0.23M U-Net and the timed 35.2M one).')
  parser.add_argument('--torch-variants', default='eager,compiled',
                      help='The PyTorch U-Net runs timed (default eager,compiled; "" skips the '
                      'same-network timing).')
  parser.add_argument('--output', default='', help='Also write the JSON to this file.')
  args = parser.parse_args(argv)
  if args.sample_repeats is None:
    args.sample_repeats = 1 if args.quick else 2
  if args.batch_sizes is None:
    args.batch_sizes = '8' if args.quick else '8,32'
  if args.sample_steps is None:
    args.sample_steps = 5 if args.quick else 100
  if args.matmul_size is None:
    args.matmul_size = 2048 if args.quick else 4096
  args.batch_list = [int(b) for b in args.batch_sizes.split(',') if b.strip()]
  return args


def _run_json(command: list[str]) -> tuple[Optional[dict[str, Any]], float, str]:
  """Runs `command` (stderr passed through); its stdout parsed as JSON, seconds, error text."""
  _log(shlex.join(command))
  start = time.perf_counter()
  process = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
  seconds = time.perf_counter() - start
  if process.returncode:
    return None, seconds, f'exit code {process.returncode}'
  try:
    return json.loads(process.stdout), seconds, ''
  except json.JSONDecodeError as error:
    return None, seconds, f'unreadable JSON: {error}'


def run_peer(args: argparse.Namespace) -> dict[str, Any]:
  """The port's measurements from peer_torch.py in the peer venv."""
  if not os.path.exists(args.peer_python):
    return {'error': f'{args.peer_python} not found: run `make bench-peer` (it creates '
                     '.venv-peer), or pass --peer-python.'}
  command = [args.peer_python, '-I', PEER, f'--batch-sizes={args.batch_sizes}',
             f'--sample-steps={args.sample_steps}', f'--matmul-size={args.matmul_size}']
  command.append(f'--sample-repeats={args.sample_repeats}')
  report, seconds, error = _run_json(command + _quick_train_options(args))
  if report is None:
    return {'error': f'peer_torch.py failed: {error}', 'seconds': seconds}
  report['seconds'] = seconds
  return report


def _quick_train_options(args: argparse.Namespace) -> list[str]:
  return ['--warmup-steps=1', '--min-steps=2', '--min-seconds=0'] if args.quick else []


def check_same_network(args: argparse.Namespace, spec_path: str) -> dict[str, Any]:
  """same_network.py's check (and the timed network's spec, to `spec_path`)."""
  command = [sys.executable, SAME_NETWORK, f'--peer-python={args.peer_python}',
             f'--sizes={args.check_sizes}', f'--spec={spec_path}']
  command += [f'--ours={o}' for o in args.ours]
  report, seconds, error = _run_json(command)
  if report is None:
    return {'passed': False, 'error': f'same_network.py failed: {error}', 'seconds': seconds}
  report['seconds'] = seconds
  return report


def run_same_network_torch(args: argparse.Namespace, spec_path: str) -> dict[str, Any]:
  """same_network_torch.py's timing of our U-Net, train step and sampler in PyTorch."""
  command = [args.peer_python, '-I', SAME_NETWORK_TORCH, f'--spec={spec_path}',
             f'--batch-sizes={args.batch_sizes}', f'--variants={args.torch_variants}',
             f'--sample-steps={args.sample_steps}', f'--sample-repeats={args.sample_repeats}']
  report, seconds, error = _run_json(command + _quick_train_options(args))
  if report is None:
    return {'error': f'same_network_torch.py failed: {error}', 'seconds': seconds}
  report['seconds'] = seconds
  return report


def run_ours(args: argparse.Namespace, batch_size: int, with_matmul: bool) -> dict[str, Any]:
  """bench.py's cifar10_small case at `batch_size` with the peer-family overrides."""
  overrides = list(OURS) + [f'training.batch_size={batch_size}',
                            f'sampling.batch_size={batch_size}']
  # The fastest setting on a CPU (README, Benchmarks): the sampler runs its network on 4 images
  # at a time.
  overrides += [f'cpu.sampler_microbatch_size={SAMPLE_MICROBATCH}'] + args.ours
  command = [sys.executable, BENCH, f'--cases={CASE}', f'--sample-steps={args.sample_steps}',
             '--no-warm-compile', f'--matmul-size={args.matmul_size if with_matmul else 0}',
             f'--sample-repeats={args.sample_repeats}']
  command += [f'--override={CASE}.{o}' for o in overrides]
  if args.quick:
    command.append('--quick')
  report, seconds, error = _run_json(command)
  if report is None:
    return {'error': f'bench.py failed: {error}', 'seconds': seconds}
  report['seconds'] = seconds
  return report


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
  return a / b if a and b else None


def compare(ours: dict[str, Any], peer: dict[str, Any], jax_matmul: Optional[float] = None,
            torch_matmul: Optional[float] = None) -> dict[str, Any]:
  """Achieved GFLOP/s (conv + matmul), images/s and FLOPs per image of both, and ours / port;
  each side's GFLOP/s also as a fraction of its own framework's dense float32 matmul."""
  out = {}
  for section in ('train', 'sampling'):
    mine, theirs = ours[section], peer[section]
    flops_key = 'conv_dot_flops_per_step' if section == 'train' else 'conv_dot_flops_per_batch'
    ours_gflops = mine.get('conv_dot_gflops_per_sec')
    out[section] = {
        'ours_gflops_per_sec': ours_gflops,
        'peer_gflops_per_sec': theirs.get('gflops_per_sec'),
        'gflops_ratio_ours_over_peer': _ratio(ours_gflops, theirs.get('gflops_per_sec')),
        'ours_images_per_sec': mine.get('images_per_sec'),
        'peer_images_per_sec': theirs.get('images_per_sec'),
        'images_ratio_ours_over_peer': _ratio(mine.get('images_per_sec'),
                                              theirs.get('images_per_sec')),
        'ours_gflop_per_image': mine[flops_key] / mine['batch_size'] / 1e9,
        'peer_gflop_per_image': (theirs['flops_per_image'] if section == 'train' else
                                 theirs['flops_per_batch'] / theirs['batch_size']) / 1e9,
        'ours_xla_gflops_per_sec': mine.get('gflops_per_sec'),
        'ours_fraction_of_jax_matmul': _ratio(ours_gflops, jax_matmul),
        'peer_fraction_of_jax_matmul': _ratio(theirs.get('gflops_per_sec'), jax_matmul),
        'peer_fraction_of_torch_matmul': _ratio(theirs.get('gflops_per_sec'), torch_matmul),
    }
  return out


def main(argv: Optional[list[str]] = None) -> int:
  """Checks the same network, runs the port, our U-Net in PyTorch, then ours per batch size;
  prints the side-by-side JSON and the summary."""
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix='bench_peer_') as tmp:
    spec_path = os.path.join(tmp, 'spec.json')
    _log('is our U-Net in PyTorch the same network? (benchmarks/same_network.py)')
    check = check_same_network(args, spec_path)
    if args.check_same_network:
      bench.emit_report(check, args.output, _log)
      return 0 if check.get('passed') else 1
    report = bench.report_header(argv, _log)
    report.update({
        'shape': [32, 32, 3], 'num_bits': 8, 'batch_sizes': args.batch_list,
        'sample_steps': args.sample_steps, 'sampler': 'ddim', 'quick': args.quick,
        'ours_overrides': list(OURS) + args.ours,
        'flops_counted': 'convolutions and matrix products, 2 per multiply-add (both sides)',
    })
    same: dict[str, Any] = {'check': check, 'sampler_steps_timed': args.sample_steps,
                            'sampling_images_per_sec_at_steps': same_network_report.REPORTED_STEPS}
    report['same_network'] = same
    _log('the PyTorch port')
    peer = run_peer(args)
    report['peer'] = peer
    if check.get('passed') and args.torch_variants:
      _log('our U-Net in PyTorch (benchmarks/same_network_torch.py)')
      same['torch'] = run_same_network_torch(args, spec_path)
    elif args.torch_variants:
      _log('the same-network check failed: our U-Net in PyTorch is not timed')
  ours_runs = {}
  for i, batch_size in enumerate(args.batch_list):
    _log(f'ours, batch {batch_size}')
    ours_runs[str(batch_size)] = run_ours(args, batch_size, with_matmul=i == 0)
  report['ours'] = ours_runs

  first = next(iter(ours_runs.values()), {})
  report['matmul_gflops_per_sec'] = {
      'jax': first.get('matmul_gflops_per_sec'),
      'torch': peer.get('matmul', {}).get('gflops_per_sec')}
  report['num_params'] = {
      'ours': next((r['cases'][CASE].get('num_params') for r in ours_runs.values()
                    if 'cases' in r), None),
      'peer': peer.get('model', {}).get('num_params'),
      'ours_in_torch': same.get('torch', {}).get('num_params')}
  report['comparison'] = {}
  same['comparison'] = {}
  failed = ['peer'] if 'error' in peer else []
  if not check.get('passed'):
    failed.append('same-network check')
  if 'error' in same.get('torch', {}):
    failed.append('our U-Net in PyTorch')
  for batch, run in ours_runs.items():
    case = run.get('cases', {}).get(CASE)
    if case is None or 'error' in case or 'error' in run:
      failed.append(f'ours batch {batch}')
      continue
    if str(batch) in peer.get('batches', {}):
      report['comparison'][batch] = compare(case, peer['batches'][str(batch)],
                                            report['matmul_gflops_per_sec']['jax'],
                                            report['matmul_gflops_per_sec']['torch'])
    torch_runs = same.get('torch', {}).get('batches', {}).get(str(batch))
    if torch_runs:
      same['comparison'][batch] = same_network_report.compare_same_network(
          case, torch_runs, args.sample_steps)
  report['load_avg_end'] = list(os.getloadavg())
  report['total_seconds'] = time.perf_counter() - start
  report['summary'] = same_network_report.summary(report)

  bench.emit_report(report, args.output, _log)
  print('\n'.join(report['summary']), file=sys.stderr, flush=True)
  if failed:
    _log(f'failed: {failed}')
    return 1
  return 0


if __name__ == '__main__':
  # As main.py: glibc's transparent-huge-page tunable (bit_diffusion/cpu.py), inherited
  # by every subprocess (ours and the port's alike).
  cpu.reexec_with_hugepages()
  sys.exit(main())
