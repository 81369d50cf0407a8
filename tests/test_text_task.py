"""The text task end to end on a small corpus the tests write: data, training of both methods,
the sample and eval modes, and the errors a user can cause."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_diffusion import config_overrides
from bit_diffusion import engine
from bit_diffusion import generation
from bit_diffusion import methods
from bit_diffusion.text import corpus as corpus_lib
from bit_diffusion.text import data as data_lib
from bit_diffusion.text import evaluate
from bit_diffusion.text import infill
from bit_diffusion.text import ngram
from configs import text as text_config
from configs import text_ar
from configs import tiny
from tests import recording

SUBJECTS = ('the cat', 'a dog', 'my friend', 'the old man', 'a bird')
VERBS = ('sat on', 'looked at', 'ran to', 'slept near', 'found')
OBJECTS = ('the mat', 'a tree', 'the house', 'the river', 'a small box')


def write_corpus(path, num_sentences: int = 900, seed: int = 0) -> str:
  """A corpus of simple sentences, one per line (about 20K characters)."""
  rng = np.random.default_rng(seed)
  lines = [f'{SUBJECTS[a].capitalize()} {VERBS[b]} {OBJECTS[c]}.'
           for a, b, c in rng.integers(0, 5, size=(num_sentences, 3))]
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  return str(path)


@pytest.fixture(scope='module')
def corpus_file(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp('corpus') / 'sentences.txt')


def make_config(module, corpus_path, cache_dir, **overrides):
  return tiny.tiny_text(module, **{'data.name': 'files', 'data.path': corpus_path,
                                   'data.splits': (0.8, 0.1, 0.1), 'eval.cache_dir': str(cache_dir),
                                   **overrides})


@pytest.fixture(scope='module')
def diffusion_run(tmp_path_factory, corpus_file):
  workdir = str(tmp_path_factory.mktemp('text_diffusion'))
  config = make_config(text_config, corpus_file, tmp_path_factory.mktemp('cache'))
  state, losses = recording.train_recording_losses(config, workdir)
  return config, workdir, state, losses


def test_corpus_is_normalised_split_by_character_and_windowed(corpus_file):
  config = make_config(text_config, corpus_file, '')
  corpus = data_lib.load_corpus(config)
  with open(corpus_file, encoding='utf-8') as f:
    text = corpus_lib.normalise_text8(f.read())
  ranges = corpus_lib.split_ranges(len(text), (0.8, 0.1, 0.1))
  for name, (start, end) in zip(data_lib.SPLITS, ranges):
    assert corpus.vocabulary.decode(corpus.splits[name]) == text[start:end]
  windows = corpus.windows('test', 16)
  assert windows.shape == ((ranges[2][1] - ranges[2][0]) // 16, 16)
  np.testing.assert_array_equal(windows.reshape(-1), corpus.splits['test'][:windows.size])


def test_sentencepiece_vocabulary_trained_on_the_training_split(corpus_file):
  pieces = {'tokenizer.kind': 'sentencepiece', 'tokenizer.vocab_size': 40,
            'tokenizer.model_type': 'bpe'}
  config = make_config(text_config, corpus_file, '', **pieces)
  corpus = data_lib.load_corpus(config)
  vocabulary = corpus.vocabulary
  assert vocabulary.num_bits == math.ceil(math.log2(vocabulary.size))
  with open(corpus_file, encoding='utf-8') as f:
    text = f.read()
  start, end = corpus_lib.split_ranges(len(text), (0.8, 0.1, 0.1))[2]
  # A newline is EOS; decoding gives the text back (case and punctuation kept).
  assert vocabulary.decode(corpus.splits['test']) == text[start:end]
  assert (corpus.splits['test'] == 1).sum() == text[start:end].count('\n')
  # The same config trains the same tokenizer again (sampling a checkpoint re-creates it).
  assert data_lib.create_vocabulary(config).model == vocabulary.model
  # A tokenizer read from tokenizer.path is that model; tokenizer.train_lines limits training.
  path = os.path.join(os.path.dirname(corpus_file), 'pieces.model')
  with open(path, 'wb') as f:
    f.write(vocabulary.model)
  variant = lambda **overrides: make_config(text_config, corpus_file, '', **pieces, **overrides)
  from_file = data_lib.create_vocabulary(variant(**{'tokenizer.path': path}))
  np.testing.assert_array_equal(from_file.encode(text[:200]), vocabulary.encode(text[:200]))
  few_lines = data_lib.create_vocabulary(variant(**{'tokenizer.train_lines': 3}))
  assert few_lines.model != vocabulary.model  # Trained on 3 lines, not on all of them.
  with pytest.raises(FileNotFoundError, match='No SentencePiece model'):
    data_lib.create_vocabulary(variant(**{'tokenizer.path': path + '.x'}))


def test_lm1b_under_mock_data():
  import tensorflow_datasets as tfds
  config = tiny.tiny_text(text_config, **{'data.name': 'lm1b', 'tokenizer.kind': 'bytes'})
  with tfds.testing.mock_data(num_examples=5):
    corpus = data_lib.load_corpus(config)
    lines = data_lib._lines(config, 'test', 0)
    train_lines = data_lib._lines(config, 'train', 0)
    limited = data_lib.load_corpus(config_overrides.apply(config, {'data.max_lines': 2}))
  assert set(corpus.splits) == {'train', 'test'}
  np.testing.assert_array_equal(limited.splits['train'],  # data.max_lines: the first 2 only.
                                corpus.vocabulary.encode('\n'.join(train_lines[:2]) + '\n'))
  assert len(lines) == 5
  np.testing.assert_array_equal(corpus.splits['test'],  # Each sentence followed by EOS.
                                corpus.vocabulary.encode('\n'.join(lines) + '\n'))


def test_embedded_default_corpus_splits_90_5_5():
  corpus = data_lib.load_corpus(text_config.get_config())
  sizes = {name: len(tokens) for name, tokens in corpus.splits.items()}
  total = sum(sizes.values())
  assert corpus.vocabulary.size == 27 and total > 4_000_000
  assert abs(sizes['test'] / total - 0.05) < 1e-6 and abs(sizes['validation'] / total - 0.05) < 1e-6
  assert corpus.windows('test', 64).shape == (sizes['test'] // 64, 64)
  start = corpus.vocabulary.decode(corpus.splits['train'][:40])
  assert start.lstrip().startswith('in the beginning god')


def test_lm1b_missing_data_is_a_clear_error(tmp_path):
  config = tiny.tiny_text(text_config, **{'data.name': 'lm1b', 'tokenizer.kind': 'bytes',
                                          'data.data_dir': str(tmp_path)})
  with pytest.raises(FileNotFoundError, match='tfds build lm1b'):
    data_lib.load_corpus(config)


def test_diffusion_trains_and_writes_previews(diffusion_run):
  config, workdir, state, losses = diffusion_run
  assert int(state.step) == 40
  # The cross-entropy starts at log(32) (the zero-initialised logits: uniform over the 32 values
  # of 5 bits); after 40 steps the denoiser is well below it (the characters' frequencies alone,
  # learnt at every noise level, would give their entropy, 2.65 nats on this corpus).
  assert config.diffusion.loss == 'cross_entropy'
  assert len(losses) == 2 and losses[1] < losses[0] and losses[1] < 0.9 * np.log(32), losses
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['40']
  with open(os.path.join(workdir, 'samples', 'text_00000040.txt'), encoding='utf-8') as f:
    lines = f.read().splitlines()
  assert len(lines) == 4 and all(len(line) == 16 for line in lines)


def test_sample_mode_writes_the_decoded_windows(diffusion_run):
  config, workdir, _, _ = diffusion_run
  path = evaluate.sample_from_checkpoint(config, workdir)
  assert os.path.basename(path) == 'samples_40_ddim3_td0_n6_seed0.txt'
  tokens = np.load(path[:-len('.txt')] + '.npy')
  model = generation.load(config, workdir)
  np.testing.assert_array_equal(
      tokens, evaluate.sample_windows(model, 6, engine.seed_key(config.seed, 'sample')))
  with open(path, encoding='utf-8') as f:
    assert f.read().splitlines() == model.task.decode(tokens)


def test_eval_mode_scores_floor_ceiling_and_each_setting(diffusion_run):
  config, workdir, _, _ = diffusion_run
  output = evaluate.evaluate_checkpoint(config, workdir)
  assert [r['setting'] for r in output['rows']] == [
      'held-out text (floor)', 'unigram sampler (ceiling)', 'ddim2_td0', 'ddim2_td1']
  assert output['heldout_bits_per_token'] is None  # Bit Diffusion has no likelihood.
  model = generation.load(config, workdir)
  task = model.task
  floor, reference = evaluate.reference_sets(task.windows('test'), 8, config.seed)
  evaluator = ngram.cached(task.corpus.splits['train'], 32, 6, config.eval.cache_dir)
  expected_floor = evaluate.score(floor, reference, evaluator, 27)
  assert {k: output['rows'][0][k] for k in evaluate.SCORES} == expected_floor
  for row, td in zip(output['rows'][2:], (0.0, 1.0)):  # Each row scores its own samples.
    samples = evaluate.sample_windows(model, 8, engine.seed_key(config.seed, 'eval_samples'),
                                      steps=2, td=td)
    assert {k: row[k] for k in evaluate.SCORES} == evaluate.score(samples, reference,
                                                                  evaluator, 27)
  # The floor is held-out text: its perplexity under the evaluator is far below the unigram
  # sampler's, and its bigram distance smaller.
  floor_row, ceiling_row = output['rows'][:2]
  assert floor_row['gen_ppl'] < 0.5 * ceiling_row['gen_ppl']
  assert floor_row['bigram_tv'] < ceiling_row['bigram_tv']
  # Infilling: each span's accuracy is that of the model's fills of the same held-out windows.
  assert [r['span'] for r in output['infill']] == [1, 4]
  windows = task.windows('test')[:6]
  mask = infill.span_masks(6, 16, 4, config.seed)
  filled = infill.fill(model, windows, mask, engine.seed_key(config.seed, 'infill'))
  np.testing.assert_array_equal(filled[mask], windows[mask])
  assert output['infill'][1]['model'] == infill.span_accuracy(filled, windows, mask)
  with open(os.path.join(workdir, 'eval', 'text_40.json')) as f:
    assert json.load(f) == output
  with open(os.path.join(workdir, 'eval', 'text_40.md')) as f:
    assert f.read().startswith('| setting | gen. perplexity |')


def test_infill_mode_fills_the_marked_characters(diffusion_run, tmp_path):
  config, workdir, _, _ = diffusion_run
  path = tmp_path / 'known.txt'
  path.write_text('the cat s_t on t\n__ dogs ran to a\n')
  written = evaluate.infill_from_file(config, workdir, str(path))
  assert os.path.basename(written) == 'known_40_ddim3_td0.txt'
  with open(written, encoding='utf-8') as f:
    lines = f.read().splitlines()
  assert len(lines) == 2 and lines[0][:9] == 'the cat s' and lines[0][10:] == 't on t'
  assert lines[1][2:] == ' dogs ran to a'
  filled = np.load(written[:-len('.txt')] + '.npy')
  model = generation.load(config, workdir)
  assert model.task.decode(filled) == lines


def test_autoregressive_baseline_trains_samples_and_scores_exact_bits(tmp_path, corpus_file):
  config = make_config(text_ar, corpus_file, tmp_path / 'cache', **{
      'training.num_steps': 20, 'training.log_every': 10, 'training.checkpoint_every': 20})
  state, losses = recording.train_recording_losses(config, str(tmp_path / 'run'))
  assert int(state.step) == 20 and losses[-1] < losses[0]
  output = evaluate.evaluate_checkpoint(config, str(tmp_path / 'run'))
  assert [r['setting'] for r in output['rows']][2:] == ['temperature1']
  # The held-out bits per token equal the method's own teacher-forced loss (nats per token,
  # here every position scored) over the whole split, divided by ln 2.
  model = generation.load(config, str(tmp_path / 'run'))
  windows = model.task.windows('test')
  loss, per_example = model.method.loss(model.graphdef, model.params,
                                        {'tokens': jnp.asarray(windows)}, jax.random.key(0))
  np.testing.assert_allclose(output['heldout_bits_per_token'], float(loss) / math.log(2),
                             rtol=1e-5)


def test_bad_inputs_get_one_clear_error(tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('  \n')
  latin1 = tmp_path / 'latin1.txt'
  latin1.write_bytes('caf\u00e9'.encode('latin-1'))
  short = tmp_path / 'short.txt'
  short.write_text('just a few words here\n' * 3)
  with pytest.raises(ValueError, match='is empty'):
    data_lib.load_corpus(tiny.tiny_text(text_config, **{'data.name': 'files',
                                                        'data.path': str(empty)}))
  with pytest.raises(ValueError, match='is not UTF-8'):
    data_lib.load_corpus(tiny.tiny_text(text_config, **{'data.name': 'files',
                                                        'data.path': str(latin1)}))
  with pytest.raises(ValueError, match='fewer than one window'):
    data_lib.load_corpus(tiny.tiny_text(text_config, **{
        'data.name': 'files', 'data.path': str(short)})).windows('test', 16)
  with pytest.raises(ValueError, match='needs 5 bits'):  # 27 symbols do not fit 4 bits.
    methods.create(tiny.tiny_text(text_config, **{'data.num_bits': 4}))
  with pytest.raises(ValueError, match="Unknown tokenizer.kind 'chars'"):
    data_lib.create_vocabulary(tiny.tiny_text(text_config, **{'tokenizer.kind': 'chars'}))
  with pytest.raises(ValueError, match='at least 16'):
    evaluate.reference_sets(np.zeros((15, 4), np.int32), 8, 0)

