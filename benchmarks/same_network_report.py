"""bench-peer's tables: ours against its PyTorch transcription (same network), and the port.

Pure Python (no jax, no torch): bench_peer.py calls it on the measurements of its subprocesses.
Sampling rates are scaled to REPORTED_STEPS steps from the steps timed (the per-step cost of a
sampler is constant), and say so (`sampler_steps_timed`).
"""

from typing import Any
from typing import Optional

REPORTED_STEPS = 100
VARIANTS = ('eager', 'compiled')


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
  return a / b if a and b else None


def compare_same_network(ours: dict[str, Any], torch_runs: dict[str, Any],
                         steps_timed: int) -> dict[str, Any]:
  """Ours (bench.py's case) against the PyTorch variants at one batch size.

  Args:
    ours: bench.py's result of the case (its 'train' and 'sampling' sections).
    torch_runs: same_network_torch.py's {'eager': ..., 'compiled': ...} of the batch size.
    steps_timed: sampler steps that both sides timed.

  Returns:
    {'train': ..., 'sampling': ...}: images/s of ours and of each variant, the best variant and
    ours / best; the sampler's at REPORTED_STEPS steps; GFLOP/s from ours' FLOPs per image
    (convolutions and matrix products: the same network, so the same FLOPs).
  """
  out = {}
  scale = steps_timed / REPORTED_STEPS
  for section in ('train', 'sampling'):
    mine = ours[section]
    per_image = (mine['conv_dot_flops_per_step'] / mine['batch_size'] if section == 'train'
                 else mine['conv_dot_flops_per_batch'] / mine['batch_size'] / scale)
    rates = {'ours': mine.get('images_per_sec')}
    for variant in VARIANTS:
      rates[f'torch_{variant}'] = torch_runs.get(variant, {}).get(section, {}).get(
          'images_per_sec')
    if section == 'sampling':
      rates = {k: v * scale if v else None for k, v in rates.items()}
    timed = {v: rates[f'torch_{v}'] for v in VARIANTS if rates[f'torch_{v}']}
    best = max(timed, key=timed.get) if timed else None
    entry = {f'{k}_images_per_sec': v for k, v in rates.items()}
    entry.update({f'{k}_gflops_per_sec': v * per_image / 1e9 if v else None
                  for k, v in rates.items()})
    entry.update(torch_best=best, torch_best_images_per_sec=timed.get(best),
                 ratio_ours_over_torch_best=_ratio(rates['ours'], timed.get(best)),
                 gflop_per_image=per_image / 1e9)
    if section == 'sampling':
      entry.update(sampler_steps_timed=steps_timed, images_per_sec_at_steps=REPORTED_STEPS)
    out[section] = entry
  return out


def _number(value: Optional[float], digits: int = 3) -> str:
  return '-' if value is None else f'{value:.{digits}g}'


def summary(report: dict[str, Any]) -> list[str]:
  """The readable summary of a bench-peer report: one line each."""
  lines = []
  same = report.get('same_network', {})
  check = same.get('check', {})
  bench_check = check.get('bench', {}).get('torch', {})
  steps = report.get('sample_steps')
  lines.append('Same network: our U-Net and its PyTorch transcription (benchmarks/unet_torch.py)')
  if bench_check:
    lines.append(f'  parameters: ours {bench_check.get("num_params_ours", 0):,}, PyTorch '
                 f'{bench_check.get("num_params_torch", 0):,}; outputs with our parameters '
                 f'differ by at most {_number(bench_check.get("max_abs_diff_eager"), 2)}')
  sizes = [size for size, result in check.items() if isinstance(result, dict) and 'torch' in result]
  lines.append(f'  check {"passed" if check.get("passed") else "FAILED or not run"} '
               f'(sizes {sizes}, tolerance {check.get("tolerance")})')
  load, cpus = report.get('load_avg_start', [0.0])[0], report.get('cpu_count') or 1
  if load > 0.5 * cpus:
    lines.append(f'  WARNING: load average {load:.1f} on {cpus} CPUs at the start: a busy machine '
                 "(PyTorch's OpenMP threads suffer most); compare numbers from an idle one")
  if steps != REPORTED_STEPS:
    lines.append(f'  sampling: {steps} DDIM steps timed, rates scaled to {REPORTED_STEPS} steps')
  header = (f'  {"batch":>5}  {"":<24} {"ours":>9} {"torch eager":>12} {"torch.compile":>14} '
            f'{"ours / best":>12}')
  rows = []
  for batch, comparison in same.get('comparison', {}).items():
    for section, label in (('train', 'train step, images/s'),
                           ('sampling', f'DDIM {REPORTED_STEPS} steps, images/s')):
      c = comparison[section]
      rows.append(f'  {batch:>5}  {label:<24} {_number(c["ours_images_per_sec"]):>9} '
                  f'{_number(c["torch_eager_images_per_sec"]):>12} '
                  f'{_number(c["torch_compiled_images_per_sec"]):>14} '
                  f'{_number(c["ratio_ours_over_torch_best"]):>12}')
  lines += [header] + rows if rows else ['  no same-network timing']
  lines.append('The port (its own, smaller network; images/s, sampling at the steps timed)')
  for batch, comparison in report.get('comparison', {}).items():
    for section in ('train', 'sampling'):
      c = comparison[section]
      lines.append(f'  {batch:>5}  {section:<9} ours {_number(c["ours_images_per_sec"])} '
                   f'({_number(c["ours_gflops_per_sec"])} GFLOP/s), port '
                   f'{_number(c["peer_images_per_sec"])} ({_number(c["peer_gflops_per_sec"])} '
                   f'GFLOP/s)')
  return lines
