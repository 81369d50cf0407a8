"""Captioning end to end on the embedded scenes: training, sample (COCO JSON) and eval modes."""

import json
import os

import jax
import numpy as np
import pytest

from bit_diffusion import engine
from bit_diffusion import generation
from bit_diffusion import methods
from bit_diffusion.captioning import evaluate
from bit_diffusion.captioning import infill
from bit_diffusion.captioning import scoring
from configs import shapes_captioning
from configs import shapes_captioning_ar
from configs import tiny
from tests import recording


@pytest.fixture(scope='module')
def diffusion_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('caption_diffusion'))
  config = tiny.tiny_captioning(shapes_captioning)
  state, losses = recording.train_recording_losses(config, workdir)
  return config, workdir, state, losses


def test_diffusion_captioner_trains_on_shapes(diffusion_run):
  config, workdir, state, losses = diffusion_run
  assert int(state.step) == 40
  assert len(losses) == 2 and losses[1] < 0.8 * losses[0], losses
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['40']
  with open(os.path.join(workdir, 'samples', 'captions_00000040.txt')) as f:
    assert len(f.read().splitlines()) == 4  # prediction | reference, per held-out image.


def test_sample_mode_writes_coco_results(diffusion_run):
  config, workdir, _, _ = diffusion_run
  path = evaluate.sample_from_checkpoint(config, workdir)
  assert os.path.basename(path) == 'results_40_ddim3_td2_n6_seed0.json'
  with open(path) as f:
    results = json.load(f)
  # One result per held-out image, in order, each caption the text of the sampled token ids.
  model = generation.load(config, workdir)
  source = model.task.eval_source()
  assert [r['image_id'] for r in results] == [int(i) for i in source.get(range(6))['image_ids']]
  _, predictions, _ = evaluate.caption_source(model, source, 6,
                                              engine.seed_key(config.seed, 'sample'))
  assert [r['caption'] for r in results] == predictions


def test_eval_mode_sweeps_steps_and_td(diffusion_run):
  config, workdir, _, _ = diffusion_run
  output = evaluate.evaluate_checkpoint(config, workdir)
  assert [r['setting'] for r in output['results']] == ['ddim2_td0', 'ddim2_td1']
  # Each row scores the captions of its own setting: regenerate them and score them here.
  model = generation.load(config, workdir)
  for row, td in zip(output['results'], (0.0, 1.0)):
    _, predictions, references = evaluate.caption_source(
        model, model.task.eval_source(), 6, engine.seed_key(config.seed, 'eval_samples'),
        steps=2, td=td)
    assert len(predictions) == output['num_images'] == 6
    expected = scoring.score(predictions, references)
    assert {k: row[k] for k in expected} == expected
  # Infilling: one token of each of 4 held-out captions removed; the share refilled exactly.
  model = generation.load(config, workdir)
  assert output['infill_token_accuracy'] == infill.token_accuracy(config, model, 4)
  assert output['infill_token_accuracy'] in (0.0, 0.25, 0.5, 0.75, 1.0)
  with open(os.path.join(workdir, 'eval', 'captions_40.json')) as f:
    assert json.load(f) == output
  with open(os.path.join(workdir, 'eval', 'captions_40.md')) as f:
    assert f.read().startswith('| setting | BLEU-4 |')


def test_infill_mode_fills_the_marked_caption_tokens(diffusion_run, tmp_path):
  config, workdir, _, _ = diffusion_run
  model = generation.load(config, workdir)
  tokenizer = model.task.tokenizer
  caption = model.task.eval_source().get([2])['captions'][0][0]
  words = caption.split()
  known = ' '.join(words[:2] + ['_'] + words[3:])
  path = tmp_path / 'blanks.json'
  path.write_text(json.dumps([{'index': 2, 'caption': known}]))
  ids, mask = infill.encode_known(known, tokenizer)
  assert (~mask).sum() == 1 and ids[np.argmax(ids == 1)] == 1  # One unknown token, then EOS.
  written = evaluate.infill_from_file(config, workdir, str(path))
  with open(written) as f:
    result = json.load(f)
  assert os.path.basename(written) == 'blanks_40.json' and result[0]['index'] == 2
  filled = tokenizer.text_to_ids([result[0]['caption']])[0]
  # The known pieces are kept around the filled one.
  assert tokenizer.ids_to_text(ids[None] * mask)[0].split()[:2] == words[:2]
  assert result[0]['caption'].split()[:2] == words[:2] and len(filled) == len(ids)
  path.write_text(json.dumps([{'index': 10_000, 'caption': known}]))
  with pytest.raises(ValueError, match='image indices must lie in'):
    evaluate.infill_from_file(config, workdir, str(path))


def test_autoguidance_guide_reads_the_images_through_its_own_encoder(diffusion_run):
  """Autoguidance of the captioner: a guide that differs from the model only in its image
  encoder changes the sampler's path (the guide encodes the images itself); the model as its
  own guide gives the unguided path bit for bit."""
  _, _, state, _ = diffusion_run
  method = methods.create(tiny.tiny_captioning(shapes_captioning,
                                               **{'sampling.guide_fraction': 0.5}))
  graphdef, _ = engine.abstract_network(method)
  params = state.ema_params
  in_encoder = lambda path: jax.tree_util.keystr(path).startswith("['encoder']")
  assert any(in_encoder(path) for path, _ in jax.tree_util.tree_leaves_with_path(params))
  other_encoder = jax.tree_util.tree_map_with_path(
      lambda path, a: a * 0.5 if in_encoder(path) else a, params)
  images = jax.random.randint(jax.random.PRNGKey(0), (4, 16, 16, 3), 0, 256)
  rng = jax.random.PRNGKey(1)
  path_of = lambda fn, p: np.asarray(fn(p, rng, images))
  guided = method.make_sample_fn(graphdef, autoguidance=1.0, steps=3, trajectory=True)
  unguided = path_of(method.make_sample_fn(graphdef, steps=3, trajectory=True), params)
  np.testing.assert_array_equal(path_of(guided, (params, params)), unguided)
  assert np.abs(path_of(guided, (params, other_encoder)) - unguided).max() > 1e-3


def test_autoregressive_baseline_trains_and_scores(tmp_path):
  config = tiny.tiny_captioning(shapes_captioning_ar, **{
      'training.num_steps': 4, 'training.log_every': 2, 'training.checkpoint_every': 4})
  state, losses = recording.train_recording_losses(config, str(tmp_path))
  assert int(state.step) == 4 and losses[-1] < losses[0]
  output = evaluate.evaluate_checkpoint(config, str(tmp_path))
  assert [r['setting'] for r in output['results']] == ['greedy']


def test_scores_of_perfect_and_wrong_captions():
  references = [['a red circle at the top', 'red circle top'], ['a blue square in the center']]
  perfect = scoring.score(['A red circle at the top.', 'a blue square in the center'], references)
  assert perfect['exact_match'] == 1.0 and perfect['bleu4'] > 0.99 and perfect['rouge_l'] > 0.99
  wrong = scoring.score(['', 'green'], references)
  assert wrong['exact_match'] == 0.0 and wrong['bleu4'] < 0.01
