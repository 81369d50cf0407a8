"""PyTorch side of bench-peer's same-network comparison; runs in .venv-peer (torch, numpy, no jax).

  .venv-peer/bin/python -I benchmarks/same_network_torch.py --check=/tmp/tiny.npz
  .venv-peer/bin/python -I benchmarks/same_network_torch.py --spec=/tmp/spec.json \
      --batch-sizes=8,32 --variants=eager,compiled

`--check=NPZ` (written by same_network.py): builds unet_torch.UNet from the .npz's arguments,
compares its parameter count with ours, loads our parameters (`load_state_dict(strict=True)`)
and compares its output with ours: passes when max |ours - torch| < --tolerance.

`--spec=JSON` (same_network.training_spec of bench-peer's config): times our train step and
sampler transcribed to PyTorch, eagerly and with `torch.compile` (of the U-Net's forward,
default mode, static shapes), per batch size:

- train step, as engine.Engine._train_step with bit_diffusion's loss: integers -> analog bits
  (LSB first, value-major, +-scale), t ~ U(0, 1), the cosine schedule, x_t; self-conditioning on
  the first k of every m examples (k / m the rate: every other example at 0.5) from a no-grad
  first pass on those examples only, clipped; x0 prediction, l2 loss; Adam (betas, eps 1e-8,
  the linear warm-up of the learning rate) after global-norm clipping, the update skipped when
  the loss or the norm is not finite (ours: a lax.cond), and the EMA of the weights. Not
  transcribed: ours' per-example metrics (x0 MSE, bit error) and norms for the logs;
- sampler: DDIM, `--sample-steps` steps from t = 1 to 0, self-conditioning on the previous
  clipped x0 estimate, then the bits' signs decoded to integers; under inference_mode, with the
  online weights (ours samples with the EMA weights: the same network and cost).

The timing as peer_torch.py: warm-up steps (the first also compiles), then the median of timed
steps; the sampler is warmed up on a 2-step batch, then `--sample-repeats` batches are timed.
Prints one JSON object.
"""

import argparse
import collections
import fractions
import json
import math
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import timing  # noqa: E402
import torch  # noqa: E402
import unet_torch  # noqa: E402


def _log(message: str) -> None:
  print(f'[same-network torch {time.strftime("%H:%M:%S")}] {message}', file=sys.stderr,
        flush=True)


def check(path: str, tolerance: float, compiled: bool) -> dict:
  """Loads our parameters from the .npz and compares the outputs (see the module docstring)."""
  data = np.load(path)
  kwargs = json.loads(str(data['network']))
  model = unet_torch.UNet(**kwargs).eval()
  result = {'network': kwargs, 'num_params_ours': int(data['num_params']),
            'num_params_torch': unet_torch.count_params(model)}
  state = {k.removeprefix('param/'): torch.from_numpy(data[k]) for k in data.files
           if k.startswith('param/')}
  model.load_state_dict(state, strict=True)  # Raises on any missing, extra or misshapen name.
  x, gamma = torch.from_numpy(data['input']), torch.from_numpy(data['gamma'])
  expected = data['expected']
  forwards = {'eager': model}
  if compiled:
    forwards['compiled'] = torch.compile(model, dynamic=False)
  passed = result['num_params_ours'] == result['num_params_torch']
  for name, forward in forwards.items():
    with torch.inference_mode():
      output = forward(x, gamma).numpy()
    diff = float(np.abs(output - expected).max())
    result[f'max_abs_diff_{name}'] = diff
    passed &= output.shape == expected.shape and diff < tolerance
  result['expected_max_abs'] = float(np.abs(expected).max())
  result['tolerance'] = tolerance
  result['passed'] = bool(passed)
  return result


def cosine_gamma(t):
  """The paper's schedule, as schedules.cosine_gamma (t a tensor or a float)."""
  angle = (t + 2e-4) / (1 + 2.5e-4) * math.pi / 2
  return torch.cos(angle) ** 2 if torch.is_tensor(angle) else math.cos(angle) ** 2


def encode(images: torch.Tensor, num_bits: int, scale: float) -> torch.Tensor:
  """Integers [b, c, h, w] -> analog bits [b, c * num_bits, h, w] (LSB first, value-major)."""
  shifts = torch.arange(num_bits)[None, None, :, None, None]
  bits = (images[:, :, None] >> shifts) & 1
  b, c, _, h, w = bits.shape
  return (bits.float() * 2 - 1).reshape(b, c * num_bits, h, w) * scale


def decode(bits: torch.Tensor, num_bits: int) -> torch.Tensor:
  """Analog bits [b, c * num_bits, h, w] -> integers [b, c, h, w] (signs)."""
  b, d, h, w = bits.shape
  positive = (bits > 0).reshape(b, d // num_bits, num_bits, h, w).long()
  return (positive << torch.arange(num_bits)[None, None, :, None, None]).sum(dim=2)


class Trainer:
  """Our train step on the PyTorch U-Net (see the module docstring)."""

  def __init__(self, model: torch.nn.Module, forward, spec: dict):
    self.forward, self.spec = forward, spec
    self.params = [p for p in model.parameters()]
    self.ema = [p.detach().clone() for p in self.params]
    opt = spec['optimizer']
    self.optimizer = torch.optim.Adam(self.params, lr=opt['learning_rate'],
                                      betas=(opt['b1'], opt['b2']), eps=opt['eps'])
    self.step_count = 0

  def loss(self, images: torch.Tensor) -> torch.Tensor:
    spec = self.spec
    bits = encode(images, spec['num_bits'], spec['bit_scale'])
    batch, rest = bits.shape[0], bits.shape[1:]
    gamma = cosine_gamma(torch.rand(batch))
    g = gamma[:, None, None, None]
    x_t = g.sqrt() * bits + (1 - g).sqrt() * torch.randn_like(bits)
    fraction = fractions.Fraction(spec['self_condition_rate']).limit_denominator(batch)
    k, m = fraction.numerator, fraction.denominator
    scale = spec['bit_scale']
    self_cond = torch.zeros_like(x_t)
    if k and batch % m == 0:  # The first k of every m examples, as Diffusion.loss_terms.
      leading = lambda a: a.reshape(batch // m, m, *a.shape[1:])[:, :k].reshape(-1, *a.shape[1:])
      first_x, first_gamma = leading(x_t), leading(gamma)
      with torch.no_grad():
        first = self.forward(torch.cat([first_x, torch.zeros_like(first_x)], 1), first_gamma)
        estimate = first.clamp(-scale, scale).reshape(batch // m, k, *rest)
      padding = torch.zeros(batch // m, m - k, *rest)
      self_cond = torch.cat([estimate, padding], 1).reshape(x_t.shape)
    elif k:  # A batch that is not a multiple of m: the first pass on all, the share kept.
      with torch.no_grad():
        estimate = self.forward(torch.cat([x_t, self_cond], 1), gamma).clamp(-scale, scale)
      chosen = (torch.arange(batch) % m < k)[:, None, None, None]
      self_cond = torch.where(chosen, estimate, 0.0)
    output = self.forward(torch.cat([x_t, self_cond], 1), gamma)
    return ((output - bits) ** 2).reshape(batch, -1).mean(1).mean()

  def step(self, images: torch.Tensor) -> float:
    opt = self.spec['optimizer']
    lr = opt['learning_rate'] * min(1.0, (self.step_count + 1) / max(1, opt['warmup_steps']))
    for group in self.optimizer.param_groups:
      group['lr'] = lr
    loss = self.loss(images)
    loss.backward()
    with torch.profiler.record_function('clip_grad_norm'):  # Names for profile_variant.
      norm = (torch.nn.utils.clip_grad_norm_(self.params, opt['grad_clip_norm'])
              if opt['grad_clip_norm'] > 0 else torch.zeros(()))
    if torch.isfinite(loss) and torch.isfinite(norm):  # As ours' NaN guard.
      self.optimizer.step()
      with torch.no_grad(), torch.profiler.record_function('ema'):
        torch._foreach_lerp_(self.ema, self.params, 1.0 - opt['ema_decay'])
    self.optimizer.zero_grad(set_to_none=True)
    self.step_count += 1
    return float(loss.detach())


@torch.inference_mode()
def sample(forward, spec: dict, batch_size: int, steps: int) -> torch.Tensor:
  """DDIM with self-conditioning (samplers.sample): integers [b, c, h, w]."""
  c, h, w = spec['image_shape']
  scale, num_bits = spec['bit_scale'], spec['num_bits']
  x = torch.randn(batch_size, c * num_bits, h, w)
  x0 = torch.zeros_like(x)
  for i in range(steps):
    g_now = cosine_gamma(1.0 - i / steps)
    g_next = cosine_gamma(max(1.0 - (i + 1) / steps, 0.0))
    self_cond = x0 if spec['sampling_self_condition'] else torch.zeros_like(x)
    x0 = forward(torch.cat([x, self_cond], 1), torch.full((batch_size,), g_now)).clamp(
        -scale, scale)
    eps = (x - math.sqrt(g_now) * x0) / math.sqrt(1 - g_now)
    x = math.sqrt(g_next) * x0 + math.sqrt(1 - g_next) * eps
  return decode(x0, num_bits)


def _variant(variant: str, batch_size: int, spec: dict):
  """(model, forward, trainer, two batches of integer images) of one variant ('eager' or
  'compiled': `torch.compile` of the U-Net's forward) at one batch size, seeded."""
  torch.manual_seed(0)
  model = unet_torch.UNet(**spec['network'])
  forward = torch.compile(model, dynamic=False) if variant == 'compiled' else model
  c, h, w = spec['image_shape']
  batches = [torch.randint(0, 2**spec['num_bits'], (batch_size, c, h, w)) for _ in range(2)]
  return model, forward, Trainer(model, forward, spec), batches


def bench_variant(variant: str, batch_size: int, spec: dict, args: argparse.Namespace) -> dict:
  """Train step and sampler of one variant ('eager' or 'compiled') at one batch size."""
  model, forward, trainer, batches = _variant(variant, batch_size, spec)
  train = {'batch_size': batch_size}
  start = time.perf_counter()
  trainer.step(batches[0])
  train['first_step_seconds'] = time.perf_counter() - start  # With compiling, if any.
  for i in range(args.warmup_steps):
    trainer.step(batches[i % 2])
  losses = []
  times = timing.timed_calls(lambda i: losses.append(trainer.step(batches[i % 2])),
                             min_steps=args.min_steps, min_seconds=args.min_seconds,
                             max_steps=args.max_steps)
  loss = losses[-1]
  median = statistics.median(times)
  train.update(timed_steps=len(times), warmup_steps=args.warmup_steps,
               step_seconds_median=median, step_seconds_min=min(times),
               images_per_sec=batch_size / median, last_loss=loss)
  _log(f'  {variant} batch {batch_size} train: {median * 1e3:.0f} ms per step, '
       f'{batch_size / median:.2f} images/s (first step {train["first_step_seconds"]:.1f} s)')

  model.eval()
  steps = args.sample_steps
  sampling = {'batch_size': batch_size, 'sampler': 'ddim', 'sampler_steps_timed': steps}
  start = time.perf_counter()
  sample(forward, spec, batch_size, min(2, steps))  # Warm-up (and compiling, if any).
  sampling['warmup_seconds'] = time.perf_counter() - start
  batch_times = []
  for _ in range(args.sample_repeats):
    start = time.perf_counter()
    images = sample(forward, spec, batch_size, steps)
    batch_times.append(time.perf_counter() - start)
  assert tuple(images.shape) == (batch_size, *spec['image_shape'])
  median = statistics.median(batch_times)
  sampling.update(timed_batches=len(batch_times), batch_seconds_median=median,
                  batch_seconds_all=batch_times, seconds_per_step=median / steps,
                  images_per_sec=batch_size / median,
                  images_per_sec_at_100_steps=batch_size / (median / steps * 100))
  _log(f'  {variant} batch {batch_size} sampling: {median / steps * 1e3:.0f} ms per step, '
       f'{sampling["images_per_sec_at_100_steps"]:.3f} images/s at 100 steps')
  return {'train': train, 'sampling': sampling}


# The categories of benchmarks/step_profile.py (ours), plus 'normalization' (PyTorch's GroupNorm
# kernels; XLA splits GroupNorm into reductions and elementwise fusions) and Python's time
# between operations.
def op_category(name: str, ancestors: list[str]) -> str:
  """The category of one profiled PyTorch operation, from its name and its callers' names."""
  backward = any(a.startswith('autograd::engine::evaluate_function') for a in ancestors)
  if any(a.startswith('Optimizer.') or a == 'ema' or a == 'clip_grad_norm' for a in ancestors):
    return 'optimizer update'
  lowered = name.lower()
  if 'conv' in lowered and not lowered.startswith('cpp_fused'):
    return 'convolution, backward' if backward or 'backward' in lowered else 'convolution'
  if any(k in lowered for k in ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm',
                                'aten::matmul', 'aten::linear', 'scaled_dot_product')):
    return 'matrix product, backward' if backward else 'matrix product'
  if 'group_norm' in lowered or 'var_mean' in lowered:
    return 'normalization'
  if any(k in lowered for k in ('aten::sum', 'aten::mean', 'aten::norm', 'aten::amax',
                                'aten::max', 'aten::softmax', 'aten::_softmax')):
    return 'reduction'
  if any(k in lowered for k in ('aten::copy_', 'aten::cat', 'aten::clone', 'aten::contiguous',
                                'aten::to', 'aten::_to_copy', 'aten::zeros', 'aten::empty',
                                'aten::fill_', 'aten::zero_', 'aten::repeat',
                                'aten::upsample', 'aten::constant_pad', 'aten::pad')):
    return 'copy / layout'
  if lowered.startswith('aten::') or lowered.startswith('cpp_fused'):
    return 'elementwise'
  return 'other'


def profile_variant(variant: str, batch_size: int, spec: dict, args: argparse.Namespace) -> dict:
  """Seconds per train step and per sampler step of one variant, by category (op_category):
  torch.profiler's own CPU time of each operation on the calling thread (an operation's time
  includes the intra-op threads it waits for). With `torch.compile`, Inductor's generated
  kernels are recorded by name (cpp_fused_...)."""
  if variant == 'compiled':
    import torch._inductor.config as inductor_config
    inductor_config.cpp.enable_kernel_profile = True
  model, forward, trainer, batches = _variant(variant, batch_size, spec)
  for i in range(1 + args.warmup_steps):
    trainer.step(batches[i % 2])

  def profiled(run, steps: int) -> dict:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
      start = time.perf_counter()
      run()
      wall = time.perf_counter() - start
    seconds, counts = collections.defaultdict(float), collections.defaultdict(int)
    for event in prof.events():
      ancestors, parent = [], event.cpu_parent
      while parent is not None:
        ancestors.append(parent.name)
        parent = parent.cpu_parent
      category = op_category(event.name, ancestors)
      if event.self_cpu_time_total > 0 and (event.name.startswith(('aten::', 'cpp_fused',
                                                                    'mkldnn::'))
                                            or category != 'other'):
        seconds[category] += event.self_cpu_time_total * 1e-6
        counts[category] += 1
    total = sum(seconds.values())
    return {'steps': steps, 'wall_seconds_per_step': wall / steps,
            'op_seconds_per_step': total / steps,
            'categories': {k: {'seconds_per_step': v / steps, 'share': v / total,
                               'ops_per_step': counts[k] / steps}
                           for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])}}

  def train():
    for i in range(args.profile_train_steps):
      trainer.step(batches[i % 2])

  model.train()
  result = {'train': profiled(train, args.profile_train_steps)}
  model.eval()
  sample(forward, spec, batch_size, 2)  # Warm-up (compiling the inference graph, if any).
  result['sampling'] = profiled(lambda: sample(forward, spec, batch_size, args.sample_steps),
                                args.sample_steps)
  for program in ('train', 'sampling'):
    _log(f'  {variant} batch {batch_size} {program}: '
         f'{result[program]["wall_seconds_per_step"] * 1e3:.0f} ms per step profiled')
  return result


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--check', default='', metavar='NPZ', help="same_network.py's export.")
  parser.add_argument('--tolerance', type=float, default=1e-4)
  parser.add_argument('--compiled', action='store_true', help='--check torch.compile too.')
  parser.add_argument('--spec', default='', help='same_network.training_spec as JSON: time it.')
  timing.add_arguments(parser)
  parser.add_argument('--variants', default='eager,compiled')
  parser.add_argument('--profile-train-steps', type=int, default=0,
                      help='With --spec: instead of timing, profile this many train steps and '
                      '--sample-steps sampler steps per variant and batch size, by category.')
  args = parser.parse_args()
  args.max_steps = max(args.max_steps, args.min_steps)
  report = {'versions': {'python': platform.python_version(), 'torch': torch.__version__},
            'torch_threads': torch.get_num_threads()}
  passed = True
  if args.check:
    report.update(check(args.check, args.tolerance, args.compiled))
    passed = report['passed']
  if args.spec:
    with open(args.spec) as f:
      spec = json.load(f)
    report.update(spec=spec, num_params=unet_torch.count_params(unet_torch.UNet(**spec['network'])),
                  load_avg_start=list(os.getloadavg()), batches={})
    for batch_size in [int(b) for b in args.batch_sizes.split(',') if b.strip()]:
      runs = {}
      for variant in [v for v in args.variants.split(',') if v]:
        _log(f'{variant}, batch {batch_size}')
        runs[variant] = (profile_variant(variant, batch_size, spec, args)
                         if args.profile_train_steps else
                         bench_variant(variant, batch_size, spec, args))
      report['batches'][str(batch_size)] = runs
    report['load_avg_end'] = list(os.getloadavg())
  print(json.dumps(report, indent=2))
  return 0 if passed else 1


if __name__ == '__main__':
  sys.exit(main())
