"""bench-peer's same-network comparison: our U-Net exported for its PyTorch transcription
(benchmarks/same_network.py, no torch needed), the report's arithmetic, and, where the peer venv
exists (`make .venv-peer/.installed`), the check that the PyTorch U-Net is the same network."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))

import same_network  # noqa: E402
import same_network_report  # noqa: E402

from bit_diffusion import methods  # noqa: E402
from bit_diffusion import unet  # noqa: E402

PEER_PYTHON = os.path.join(REPO_ROOT, '.venv-peer', 'bin', 'python')


@pytest.fixture(scope='module')
def tiny():
  """(our tiny U-Net of same_network.SIZES, its config's network arguments)."""
  config = same_network.build_config('tiny')
  method = methods.create(config)
  model = method.create_network(jax.random.PRNGKey(0))
  same_network.perturb(model)
  return model, same_network.network_kwargs(config, method)


def test_export_has_torch_names_layouts_and_every_parameter(tiny):
  model, kwargs = tiny
  state = same_network.torch_state_dict(model)
  assert sum(v.size for v in state.values()) == unet.count_params(model)
  assert all(name.endswith(('.weight', '.bias')) for name in state)
  # 3x3 convs HWIO -> OIHW; dense kernels [in, out] -> [out, in]; GroupNorm scale -> weight.
  np.testing.assert_array_equal(state['conv_in.weight'],
                                model.conv_in.kernel[...].transpose(3, 2, 0, 1))
  assert state['conv_in.weight'].shape == (16, kwargs['in_channels'], 3, 3)
  assert state['conv_out.weight'].shape == (kwargs['out_channels'], 16, 3, 3)
  np.testing.assert_array_equal(state['down.0.res.emb_proj.weight'],
                                model.down[0].res.emb_proj.kernel[...].T)
  assert state['down.0.res.emb_proj.weight'].shape == (2 * 16, 4 * 16)
  np.testing.assert_array_equal(state['norm_in.weight'], model.norm_in.scale[...])
  # Every kind of layer: the stride-2 conv, 1x1 shortcuts, attention at 16x16, the upsampling
  # conv; 2 stages of 2 blocks down, 3 up.
  assert state['downsample.0.weight'].shape == (16, 16, 3, 3)
  assert state['down.2.res.shortcut.weight'].shape == (32, 16, 1, 1)
  assert state['down.2.attn.qkv.weight'].shape == (3 * 32, 32)
  assert state['up.0.res.shortcut.weight'].shape == (32, 64, 1, 1)  # Concatenated skip.
  assert state['upsample.0.weight'].shape == (32, 32, 3, 3)
  modules = {'.'.join(name.split('.')[:2]) for name in state if name[:2] in ('do', 'up')}
  assert modules == {'down.0', 'down.1', 'down.2', 'down.3', 'downsample.0', 'up.0', 'up.1',
                     'up.2', 'up.3', 'up.4', 'up.5', 'upsample.0'}
  assert not any('.attn.' in n for n in state if n.startswith(('down.0', 'down.1', 'up.3')))


def test_perturb_leaves_no_zero_or_identity_layer(tiny):
  model, _ = tiny
  state = nnx.state(model, nnx.Param)
  conv_out = np.asarray(state['conv_out']['kernel'][...])
  assert np.abs(conv_out).min() > 0  # Zero-initialised in the real network.
  assert not np.allclose(np.asarray(state['norm_in']['scale'][...]), 1.0)


def test_training_spec_of_the_bench_config():
  config = same_network.build_config('bench')
  spec = same_network.training_spec(config, methods.create(config))
  assert spec['network'] == {
      'in_channels': 48, 'out_channels': 24, 'out_kernel_size': 3, 'image_size': 32,
      'base_channels': 128, 'channel_multipliers': [1, 2, 2, 2], 'num_res_blocks': 2,
      'attention_resolutions': [16], 'head_dim': 256, 'dropout': 0.0}
  assert spec['self_condition_rate'] == 0.5 and spec['sampling_self_condition']
  assert spec['optimizer']['grad_clip_norm'] == config.optimizer.grad_clip_norm
  assert spec['optimizer']['ema_decay'] == config.optimizer.ema_decay
  config = same_network.build_config('bench', ('diffusion.prediction=eps',))
  with pytest.raises(ValueError, match='diffusion.prediction'):
    same_network.training_spec(config, methods.create(config))


def test_report_scales_sampling_to_100_steps_and_takes_the_faster_torch_run():
  ours = {'train': {'batch_size': 8, 'images_per_sec': 6.0, 'conv_dot_flops_per_step': 8e9},
          'sampling': {'batch_size': 8, 'images_per_sec': 10.0,
                       'conv_dot_flops_per_batch': 8e9}}
  torch_runs = {'eager': {'train': {'images_per_sec': 3.0}, 'sampling': {'images_per_sec': 5.0}},
                'compiled': {'train': {'images_per_sec': 4.0},
                             'sampling': {'images_per_sec': 4.0}}}
  result = same_network_report.compare_same_network(ours, torch_runs, steps_timed=10)
  assert result['train']['torch_best'] == 'compiled'
  assert result['train']['ratio_ours_over_torch_best'] == pytest.approx(1.5)
  assert result['train']['ours_gflops_per_sec'] == pytest.approx(6.0)  # 1 GFLOP per image.
  sampling = result['sampling']
  assert sampling['sampler_steps_timed'] == 10 and sampling['torch_best'] == 'eager'
  assert sampling['ours_images_per_sec'] == pytest.approx(1.0)  # 10 steps -> 100 steps.
  assert sampling['ratio_ours_over_torch_best'] == pytest.approx(2.0)
  assert sampling['gflop_per_image'] == pytest.approx(10.0)
  lines = same_network_report.summary({'sample_steps': 10, 'same_network': {
      'check': {'passed': True}, 'comparison': {'8': result}}})
  assert any('scaled to 100 steps' in line for line in lines)


@functools.cache
def _peer_has_torch() -> bool:
  if not os.path.exists(PEER_PYTHON):
    return False
  return subprocess.run([PEER_PYTHON, '-c', 'import torch'], capture_output=True).returncode == 0


@pytest.fixture
def peer_python() -> str:
  """The peer venv's Python, or a skip. Checked when a test asks (importing torch takes about
  5 s), not at collection, where every pytest-xdist worker would pay it."""
  if not _peer_has_torch():
    pytest.skip('needs the peer venv with torch: make .venv-peer/.installed')
  return PEER_PYTHON


def test_pytorch_transcription_is_the_same_network(peer_python):
  """Both sizes: equal parameter counts, our parameters loaded by name, outputs within 1e-4
  (about 2 min on the 2-core machine)."""
  report = same_network.check(peer_python, ('tiny', 'bench'), log=lambda _: None)
  assert report['passed'], report
  bench = report['bench']['torch']
  assert bench['num_params_ours'] == bench['num_params_torch'] == 35_232_152
  assert bench['max_abs_diff_eager'] < 1e-4


def test_pytorch_profile_categories_match_step_profile_s(peer_python):
  """same_network_torch.op_category: operations by name and by their callers (autograd's
  backward functions, the optimizer, the EMA) into benchmarks/step_profile.py's categories."""
  import step_profile
  cases = [('aten::mkldnn_convolution', [], 'convolution'),
           ('aten::convolution_backward', ['autograd::engine::evaluate_function: '
                                           'ConvolutionBackward0'], 'convolution, backward'),
           ('aten::mm', ['autograd::engine::evaluate_function: MmBackward0'],
            'matrix product, backward'),
           ('aten::bmm', ['aten::matmul'], 'matrix product'),
           ('aten::native_group_norm', [], 'normalization'),
           ('aten::add_', ['Optimizer.step#Adam.step'], 'optimizer update'),
           ('aten::_foreach_lerp_', ['ema'], 'optimizer update'),
           ('aten::silu', [], 'elementwise'),
           ('aten::cat', [], 'copy / layout'),
           ('cpp_fused_native_group_norm_silu_3', ['CompiledFunction'], 'normalization'),
           ('cpp_fused_add_mul_7', ['CompiledFunction'], 'elementwise')]
  code = ('import json, sys; sys.path.insert(0, "benchmarks"); import same_network_torch as s; '
          f'print(json.dumps([s.op_category(n, a) for n, a, _ in {cases!r}]))')
  process = subprocess.run([peer_python, '-I', '-c', code], cwd=REPO_ROOT, capture_output=True,
                           text=True)
  assert process.returncode == 0, process.stderr[-2000:]
  assert json.loads(process.stdout) == [expected for _, _, expected in cases]
  assert {expected for _, _, expected in cases} <= set(step_profile.CATEGORIES) | {'normalization'}
