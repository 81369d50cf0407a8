"""The digits check: the classifier's metric ranks real digits first; sharding; `--mode=eval`."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import ndimage

from bit_diffusion import engine
from bit_diffusion import evaluate
from bit_diffusion import input_pipeline
from bit_diffusion import train_loop
from bit_diffusion.metrics import digits_classifier
from bit_diffusion.metrics import features
from bit_diffusion.metrics import fid
from bit_diffusion.metrics import inception
from configs import tiny
from tests import subprocesses

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def cache_dir(digits_cache):
  """A cache for this module holding the run's trained digits classifier (tests/conftest.py);
  the reference statistics are computed into it by the first test."""
  return digits_cache()


def _digits_config(cache_dir, **overrides):
  return tiny.tiny_digits(**{'eval.cache_dir': cache_dir, 'eval.num_samples': 40,
                             'training.num_steps': 2, **overrides})


def test_real_digits_score_better_than_blurred_or_noisy(cache_dir):
  config = _digits_config(cache_dir)
  mesh = engine.create_mesh()
  extractor = features.Extractor(features.create_feature_net(config.eval), mesh, 1000)
  reference = features.reference_statistics(config, extractor, 16)
  source, _ = input_pipeline.create_source(config.data)
  half_a, _ = features.split_halves(len(source))
  real = source.get(half_a)['images'].astype(np.float64)  # [898, 8, 8, 1], 0..16
  rng = np.random.default_rng(0)
  variants = {
      'real': real,
      'blurred': ndimage.uniform_filter(real, size=(1, 3, 3, 1)),
      'noisy': np.clip(np.round(real + rng.normal(0, 3, real.shape)), 0, 16),
  }
  scores = {}
  for name, images in variants.items():
    f, logits = features.extract(extractor, features.to_unit_range(images, 16))
    scores[name] = fid.all_metrics(reference['stats'], reference['real_features'], f, logits)
  print({name: round(s['fid'], 3) for name, s in scores.items()})
  # Real half A against half B is the stored floor.
  np.testing.assert_allclose(scores['real']['fid'], reference['floor']['fid'], rtol=1e-6)
  assert reference['floor_count'] == len(half_a) == 898
  for worse in ('blurred', 'noisy'):
    assert scores['real']['fid'] < scores[worse]['fid'] / 2, scores
    assert scores['real']['is'] > scores[worse]['is'], scores
  assert scores['real']['is'] > 9  # A good classifier of 10 balanced classes.
  # The second call reads the stored statistics.
  again = features.reference_statistics(config, extractor, 16)
  np.testing.assert_array_equal(again['stats'].sigma, reference['stats'].sigma)


_SHARDING_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import jax
    from jax.sharding import Mesh
    from bit_diffusion.metrics import digits_classifier, features, inception
    assert jax.device_count() == 2, jax.devices()
    one = Mesh(np.array(jax.devices()[:1]), ('data',))
    two = Mesh(np.array(jax.devices()), ('data',))
    graphdef, params, _ = digits_classifier.load_or_train(sys.argv[1])
    digits = features.FeatureNet('digits', digits_classifier.make_apply_fn(graphdef), params, '')
    graphdef, state = inception.load_inception(None)
    incept = features.FeatureNet('inception', inception.make_apply_fn(graphdef), state, '')
    images = np.random.default_rng(0).random((6, 8, 8, 1)).astype(np.float32)
    for net, batch in ((digits, 6), (incept, 2)):
      f1, l1 = features.extract(features.Extractor(net, one, batch), images)
      f2, l2 = features.extract(features.Extractor(net, two, batch), images)
      # Equal up to float32 round-off: a different batch per device may change how XLA blocks
      # the convolutions (about 1e-6 relative for Inception's 94 layers).
      np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-5)
      print(net.name, f1.shape, 'max difference', np.abs(f1 - f2).max(), np.abs(l1 - l2).max())
''')


def test_features_do_not_depend_on_the_device_split(cache_dir):
  env = subprocesses.env(XLA_FLAGS='--xla_force_host_platform_device_count=2',
                         PYTHONPATH=REPO_ROOT)
  result = subprocess.run([sys.executable, '-c', _SHARDING_SCRIPT, cache_dir], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  print(result.stdout)
  assert 'digits (6, 64)' in result.stdout and 'inception (6, 2048)' in result.stdout


def test_feature_extractor_takes_the_cpu_kernels_not_other_features():
  """With a config's `cpu` section the Extractor compiles Inception-v3 with `cpu.jit`'s options
  (no YNNPACK convolutions, as the train step); the features equal XLA's defaults' up to
  float32 round-off."""
  mesh = engine.create_mesh()
  graphdef, state = inception.load_inception(None)  # Random weights: the kernels are the test.
  net = features.FeatureNet('inception', inception.make_apply_fn(graphdef), state, '')
  images = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
  tuned = features.Extractor(net, mesh, 2, tiny.tiny_digits().cpu)
  plain = features.Extractor(net, mesh, 2)
  (tuned_features, tuned_logits), (plain_features, plain_logits) = tuned(images), plain(images)
  assert tuned._fn.tuned._cache_size() == 1
  compiled = [e._fn.lower(e.params, images).compile().as_text()
              for e in (tuned, plain)]
  assert compiled[0].count('ynn_fusion') < compiled[1].count('ynn_fusion')
  np.testing.assert_allclose(tuned_features, plain_features, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(tuned_logits, plain_logits, rtol=1e-4, atol=1e-5)
  assert np.std(tuned_features[0] - tuned_features[1]) > 1e-3  # Features of the images.


def test_eval_mode_reports_sample_metrics_beside_the_floor(cache_dir, tmp_path, capsys):
  workdir = str(tmp_path)
  config = _digits_config(cache_dir, **{'eval.num_batches': 0, 'eval.infill_images': 16})
  train_loop.train_and_evaluate(config, workdir)
  results = evaluate.evaluate_checkpoint(config, workdir)
  with open(os.path.join(workdir, 'eval', 'metrics_2.json')) as f:
    assert json.load(f) == results
  assert results['eval/num_samples'] == 40 and results['eval/floor_count'] == 898
  for name in ('fid', 'is', 'precision', 'recall'):
    assert np.isfinite(results[f'eval/{name}']) and np.isfinite(results[f'eval/{name}_floor'])
  assert results['eval/fid'] > results['eval/fid_floor']  # Two training steps make noise.
  assert 'real-vs-real floor' in capsys.readouterr().out
  # Infilling the lower halves: the ceiling is the classifier's agreement on the 16 originals.
  images, labels = digits_classifier.load_digits()
  graphdef, params, _ = digits_classifier.load_or_train(cache_dir)
  _, logits = digits_classifier.make_apply_fn(graphdef)(params, images[:16])
  assert results['eval/infill_agreement/original'] == float(
      (np.argmax(logits, -1) == labels[:16]).mean())
  assert {k.split('/')[-1] for k in results if 'infill' in k} == {
      'infill', 'original', 'other_lower_half'}
