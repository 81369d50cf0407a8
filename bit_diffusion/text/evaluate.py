"""The text task's `sample` and `eval` modes, on the latest checkpoint of a workdir.

--mode=sample writes `sampling.num_samples` windows as text (one per line) and as token ids.
--mode=eval scores `eval.num_samples` windows per setting (Bit Diffusion: every steps x td of
`eval.sweep_steps` x `eval.sweep_td`; the autoregressive baseline: `sampling.temperature`),
each beside the same numbers for held-out text (the floor) and for i.i.d. draws from the
training unigram frequencies (the ceiling), so every number has its scale:

- gen_ppl: generative perplexity, exp of the mean negative log-likelihood per token under a
  fixed evaluator: an interpolated Kneser-Ney n-gram model (`ngram.py`, order
  `eval.evaluator_order`) fitted once on the training split and cached, independent of the
  models compared;
- unigram_tv, bigram_tv: total-variation distances of the samples' token and token-pair
  frequencies to held-out text (`metrics.py`);
- distinct_4, rep_4: the share of distinct 4-grams over all samples, and the mean share of
  repeated 4-grams within a sample;
- invalid: the share of sampled ids that are no token (Bit Diffusion's k bits spell 2**k values,
  more than a vocabulary of 27 characters). The statistics and the evaluator run over all 2**k
  values: such an id was never seen in training and gets only the evaluator's smoothing mass.

Infilling: for each span length of `eval.infill_spans`, `eval.infill_windows` held-out windows
lose one span each at a random place; the model fills it (Bit Diffusion by replacement, with
`config.sampling`; the autoregressive baseline greedily from the left context alone) and so does
the unigram sampler; the score is the share of the span's tokens recovered exactly.
`--mode=infill --infill_file=FILE` fills a user's windows (`infill.py`).

The autoregressive baseline also gets its exact held-out bits per token (teacher-forced
cross-entropy of the eval split's windows). Bit Diffusion gets none: its x0 regression loss is
not a likelihood bound, and decoding by the signs of the bits defines no token likelihood
(a variational bound would need a model trained with a discrete decoder, as VDM; README "Text").
"""

import itertools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from bit_diffusion import checkpointing
from bit_diffusion import engine
from bit_diffusion import generation
from bit_diffusion import metric_writer
from bit_diffusion import outputs
from bit_diffusion.methods import autoregressive
from bit_diffusion.metrics import inception
from bit_diffusion.text import infill as infill_lib
from bit_diffusion.text import metrics as text_metrics
from bit_diffusion.text import ngram

SCORES = ('gen_ppl', 'unigram_tv', 'bigram_tv', 'distinct_4', 'rep_4', 'invalid')


def sample_windows(model: generation.LoadedModel, num: int, rng: jax.Array,
                   **overrides) -> np.ndarray:
  """int32 [num, L]: `num` unconditional samples through the one generation loop."""
  batch_size = model.batch_size(model.method.config.sampling.batch_size)
  return generation.generate(model.make_sample_fn(**overrides), model.params, rng,
                             np.zeros((num,), np.int32), batch_size)


# 'ddim100_td1', 'temperature1', 'ggm_k1': how the samples were drawn, in names and rows.
setting_name = generation.setting_name


def sample_from_checkpoint(config, workdir: str) -> str:
  """Writes WORKDIR/text/samples_<step>_<setting>_n<N>_seed<S>.txt (one window per line,
  newlines shown as U+23CE) and .npy (token ids int32 [N, L]); returns the .txt path. An
  existing file is never overwritten (`outputs.reserve`)."""
  workdir = checkpointing.ensure_writable_dir(workdir)
  s = config.sampling
  model = generation.load(config, workdir, s.use_ema)
  tokens = sample_windows(model, s.num_samples, engine.seed_key(config.seed, 'sample'))
  stem = os.path.join(workdir, 'text', f'samples_{model.step}_{setting_name(config)}'
                      f'_n{len(tokens)}_seed{config.seed}')
  if jax.process_index() == 0:
    stem = outputs.reserve(stem, ('.txt', '.npy'))
    write_texts(stem + '.txt', model.task.decode(tokens))
    np.save(stem + '.npy', tokens)
    logging.info('Wrote %d samples to %s.txt and .npy.', len(tokens), stem)
  return stem + '.txt'


def write_texts(path: str, texts: list[str]) -> None:
  """One text per line, its newlines shown as U+23CE."""
  with open(path, 'w', encoding='utf-8') as f:
    f.write(''.join(t.replace('\n', '\u23ce') + '\n' for t in texts))


def reference_sets(windows: np.ndarray, num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(floor [num, L], reference [n - num, L]): a random draw of `num` held-out windows, scored
  like samples against the other held-out windows (the reference of every row)."""
  if len(windows) < 2 * num:
    raise ValueError(f'The held-out split has {len(windows)} windows; scoring {num} samples '
                     f'needs at least {2 * num} (half as the floor, the rest as the reference). '
                     'Lower eval.num_samples or give the held-out split a larger share.')
  order = np.random.default_rng(seed).permutation(len(windows))
  return windows[order[:num]], windows[order[num:]]


def score(samples: np.ndarray, reference: np.ndarray, evaluator: ngram.KneserNeyLM,
          vocab_size: int) -> dict[str, float]:
  """The sample scores of SCORES for int [N, L] samples against reference windows; ids lie in
  [0, evaluator.vocab_size) (all values of the bits), tokens in [0, vocab_size)."""
  num_values = evaluator.vocab_size
  nll = -evaluator.log_probs(samples).mean()
  return {'gen_ppl': float(np.exp(nll)),
          'unigram_tv': text_metrics.ngram_tv(samples, reference, 1, num_values),
          'bigram_tv': text_metrics.ngram_tv(samples, reference, 2, num_values),
          'distinct_4': text_metrics.distinct_n(samples, 4, num_values),
          'rep_4': text_metrics.repetition_rate(samples, 4, num_values),
          'invalid': float(np.mean(samples >= vocab_size))}


def heldout_bits_per_token(model: generation.LoadedModel, windows: np.ndarray,
                           batch_size: int) -> float:
  """The autoregressive baseline's teacher-forced cross-entropy of `windows` int [n, L], in bits
  per token (exact: the model's own likelihood of every token given the window before it)."""
  @jax.jit
  def total_nll(params, tokens):
    network = nnx.merge(model.graphdef, params, copy=True)
    logits = network.logits(autoregressive.shift_right(tokens, network.start_id),
                            network.encode_condition(None)).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).sum()

  total = 0.0
  for start in range(0, len(windows), batch_size):
    total += float(total_nll(model.params, jnp.asarray(windows[start:start + batch_size])))
  return text_metrics.bits_per_token(total, windows.size)


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
  """Scores the latest checkpoint: the floor, the ceiling, then each sampling setting.

  Writes WORKDIR/eval/text_<step>.json and a Markdown table text_<step>.md (text_<step>_2.* and
  so on when they exist); returns {'step', 'num_samples', 'heldout_bits_per_token' (the AR
  baseline; None for Bit Diffusion), 'rows': [{'setting', SCORES..., 'seconds'}, ...]}.
  """
  workdir = checkpointing.ensure_writable_dir(workdir)
  model = generation.load(config, workdir, config.sampling.use_ema)
  task, num = model.task, config.eval.num_samples
  held_out = task.windows(config.data.eval_split)
  floor, reference = reference_sets(held_out, num, config.seed)
  train_tokens = task.corpus.splits['train']
  evaluator = ngram.cached(train_tokens, task.num_values, config.eval.evaluator_order,
                           config.eval.cache_dir or inception.default_cache_dir())
  ceiling = text_metrics.unigram_sampler(train_tokens, task.vocab_size, num,
                                         task.example_shape[0], config.seed)
  rows = [dict(setting='held-out text (floor)', **score(floor, reference, evaluator,
                                                        task.vocab_size), seconds=0.0),
          dict(setting='unigram sampler (ceiling)', **score(ceiling, reference, evaluator,
                                                            task.vocab_size), seconds=0.0)]
  if config.method != 'bit_diffusion':  # One sampler setting, no steps x td sweep.
    settings = [(0, 0.0)]
  else:
    settings = list(itertools.product(config.eval.sweep_steps or (config.sampling.steps,),
                                      config.eval.sweep_td or (config.sampling.td,)))
  examples = {}
  for steps, td in settings:
    start = time.time()
    overrides = dict(steps=int(steps), td=float(td)) if config.method == 'bit_diffusion' else {}
    samples = sample_windows(model, num, engine.seed_key(config.seed, 'eval_samples'),
                             **overrides)
    row = dict(setting=setting_name(config, steps, td),
               **score(samples, reference, evaluator, task.vocab_size),
               seconds=round(time.time() - start, 1))
    examples[row['setting']] = task.decode(samples[:4])
    logging.info('Step %d, %s: %s', model.step, row['setting'], row)
    rows.append(row)
  bits = None
  if config.method == 'autoregressive':
    bits = heldout_bits_per_token(model, held_out, model.batch_size(config.sampling.batch_size))
  infill_rows = infill_accuracies(config, model, held_out[:config.eval.infill_windows])
  output = {'step': model.step, 'num_samples': num, 'heldout_bits_per_token': bits,
            'evaluator': f'Kneser-Ney, order {config.eval.evaluator_order}',
            'rows': rows, 'infill': infill_rows, 'examples': examples}
  if jax.process_index() == 0:
    base = outputs.reserve(os.path.join(workdir, 'eval', f'text_{model.step}'), ('.json', '.md'))
    with open(base + '.json', 'w') as f:
      json.dump(output, f, indent=2)
    with open(base + '.md', 'w') as f:
      f.write(results_table(rows, bits) + infill_table(infill_rows))
    writer = metric_writer.create_writer(workdir)
    scalars = {f'eval/{rows[-1]["setting"]}/{k}': rows[-1][k] for k in SCORES}
    if bits is not None:
      scalars['eval/heldout_bits_per_token'] = bits
    scalars.update({f'eval/infill_span{r["span"]}_accuracy': r['model'] for r in infill_rows})
    writer.write_scalars(model.step, scalars)
    writer.close()
    logging.info('Wrote %s.json and .md', base)
  return output


def results_table(rows: list[dict], bits_per_token=None) -> str:
  """A Markdown table: setting, gen. perplexity, unigram TV, bigram TV, distinct-4, rep-4, s."""
  lines = ['| setting | gen. perplexity | unigram TV | bigram TV | distinct-4 | rep-4 | invalid | '
           'seconds |', '| --- | --- | --- | --- | --- | --- | --- | --- |']
  lines += [f'| {r["setting"]} | {r["gen_ppl"]:.2f} | {r["unigram_tv"]:.3f} | '
            f'{r["bigram_tv"]:.3f} | {r["distinct_4"]:.3f} | {r["rep_4"]:.3f} | '
            f'{r["invalid"]:.2%} | {r["seconds"]} |' for r in rows]
  if bits_per_token is not None:
    lines.append(f'\nHeld-out bits per token (teacher-forced): {bits_per_token:.3f}')
  return '\n'.join(lines) + '\n'


def infill_accuracies(config, model: generation.LoadedModel, windows: np.ndarray) -> list[dict]:
  """[{'span', 'model', 'unigram', ...}]: the share of a removed span recovered, per span length.

  'model' is the config's infilling; Bit Diffusion also gets one entry per infilling method it
  supports ('replace', and 'clean' after training with position noise).
  """
  rows = []
  train_tokens = model.task.corpus.splits['train']
  names = model.method.infill_methods() if config.method == 'bit_diffusion' else ()
  rng = engine.seed_key(config.seed, 'infill')
  for span in config.eval.infill_spans:
    mask = infill_lib.span_masks(len(windows), windows.shape[1], int(span), config.seed)
    accuracy = lambda filled: infill_lib.span_accuracy(filled, windows, mask)  # noqa: B023
    unigram = infill_lib.unigram_fill(windows, mask, train_tokens, model.task.vocab_size,
                                      config.seed)
    row = {'span': int(span)}
    for name in names:
      row[name] = accuracy(infill_lib.fill(model, windows, mask, rng, infill_method=name))
    default = config.sampling.get('infill_method')
    row['model'] = (row[default] if default in row
                    else accuracy(infill_lib.fill(model, windows, mask, rng)))
    row['unigram'] = accuracy(unigram)
    rows.append(row)
  return rows


def infill_table(rows: list[dict]) -> str:
  """A Markdown table: span, the model's accuracy (per infilling method if several), unigram."""
  if not rows:
    return ''
  methods = [k for k in rows[0] if k not in ('span', 'model', 'unigram')]
  columns = methods or ['model']
  lines = ['', '| infilled span | ' + ' | '.join(
      f'model, {c}' if methods else c for c in columns) + ' | unigram sampler |',
           '| --- |' + ' --- |' * (len(columns) + 1)]
  lines += [f'| {r["span"]} | ' + ' | '.join(f'{r[c]:.1%}' for c in columns) +
            f' | {r["unigram"]:.1%} |' for r in rows]
  return '\n'.join(lines) + '\n'


def infill_from_file(config, workdir: str, path: str) -> str:
  """Fills the unknown tokens of an infill file (`infill.read_known`) with the latest
  checkpoint; writes WORKDIR/infill/<file name>_<step>_<setting>.txt (one window per line) and
  .npy (token ids int32 [N, L]); returns the .txt path."""
  workdir = checkpointing.ensure_writable_dir(workdir)
  model = generation.load(config, workdir, config.sampling.use_ema)
  tokens, mask = infill_lib.read_known(path, model.task.vocabulary, model.task.example_shape[0])
  filled = infill_lib.fill(model, tokens, mask, engine.seed_key(config.seed, 'infill'))
  setting = 'greedy' if config.method == 'autoregressive' else setting_name(config)
  name = os.path.splitext(os.path.basename(path))[0]
  stem = os.path.join(workdir, 'infill', f'{name}_{model.step}_{setting}')
  if jax.process_index() == 0:
    stem = outputs.reserve(stem, ('.txt', '.npy'))
    write_texts(stem + '.txt', model.task.decode(filled))
    np.save(stem + '.npy', filled)
    logging.info('Filled %d windows (%d unknown tokens) into %s.txt', len(filled),
                 int((~mask).sum()), stem)
  return stem + '.txt'
