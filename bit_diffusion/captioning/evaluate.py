"""Captioning's `sample`, `eval` and `tokenizer` modes, on the latest checkpoint of a workdir.

--mode=sample writes COCO results JSON ([{"image_id": int, "caption": str}, ...]) for the
held-out images; --mode=eval scores them (BLEU-4, CIDEr, ROUGE-L, exact match; `scoring.py`)
for every (steps, td) of `eval.sweep_steps` x `eval.sweep_td`, like the paper's Table 4, or
for `config.sampling` alone when the sweep is empty (and always once for the greedy AR baseline
and for GGM's heat-bath sampler, which have no steps or td).
"""

import itertools
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from bit_diffusion import checkpointing
from bit_diffusion import engine
from bit_diffusion import generation
from bit_diffusion import metric_writer
from bit_diffusion import outputs
from bit_diffusion.captioning import data as data_lib
from bit_diffusion.captioning import infill
from bit_diffusion.captioning import scoring
from bit_diffusion.captioning import tokens as tokens_lib

# --mode=infill for captions (captioning/infill.py has the file format).
infill_from_file = infill.infill_from_file


def caption_source(model: generation.LoadedModel, source, num_images: int, rng: jax.Array,
                   **overrides) -> tuple[np.ndarray, list[str], list[list[str]]]:
  """Captions the first `num_images` (0: all) of `source`: (image ids, predictions, references).

  Images are read batch by batch (`sampling.batch_size`), so big held-out sets stream; each
  batch goes through the one generation loop (`generation.generate`).
  """
  sample_fn = model.make_sample_fn(**overrides)
  batch_size = model.batch_size(model.method.config.sampling.batch_size)
  num = min(num_images or len(source), len(source))
  image_ids, predictions, references = [], [], []
  for start in range(0, num, batch_size):
    batch = source.get(np.arange(start, min(start + batch_size, num)))
    ids = generation.generate(sample_fn, model.params, jax.random.fold_in(rng, start),
                              batch['images'], batch_size)
    image_ids.append(batch['image_ids'])
    predictions += model.task.tokenizer.ids_to_text(ids)
    references += batch['captions']
  return np.concatenate(image_ids), predictions, references


def _setting_name(config, steps: int, td: float) -> str:
  """'greedy' (the AR baseline), 'ddim20_td2' (Bit Diffusion), 'ggm_k1' (GGM)."""
  if config.method == 'autoregressive':
    return 'greedy'
  return generation.setting_name(config, steps, td)


def sample_from_checkpoint(config, workdir: str) -> str:
  """Captions `sampling.num_samples` held-out images; writes and returns the results path.

  WORKDIR/captions/results_<step>_<sampler><steps>_td<td>_n<N>_seed<S>.json ('greedy' for the
  AR baseline, 'ggm_k<k>' for GGM); an existing file is never overwritten (..._2.json, ...:
  `outputs.reserve`).
  """
  workdir = checkpointing.ensure_writable_dir(workdir)
  model = generation.load(config, workdir, config.sampling.use_ema)
  step = model.step
  image_ids, predictions, _ = caption_source(model, model.task.eval_source(),
                                             config.sampling.num_samples,
                                             engine.seed_key(config.seed, 'sample'))
  name = (f'{_setting_name(config, *_sampling_setting(config))}_n{len(predictions)}'
          f'_seed{config.seed}')
  stem = os.path.join(workdir, 'captions', f'results_{step}_{name}')
  path = stem + '.json'
  if jax.process_index() == 0:
    path = outputs.reserve(stem, ('.json',)) + '.json'
    with open(path, 'w') as f:
      json.dump([{'image_id': int(i), 'caption': c} for i, c in zip(image_ids, predictions)], f,
                indent=0)
    logging.info('Wrote %d captions to %s.', len(predictions), path)
  return path


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
  """Scores the latest checkpoint on `eval.num_images` held-out images, over the sweep.

  Writes WORKDIR/eval/captions_<step>.json (one entry per setting) and a Markdown table
  WORKDIR/eval/captions_<step>.md (captions_<step>_2.* and so on when they exist); returns
  {'step', 'results': [{'setting', 'steps', 'td', 'bleu4', 'cider', 'rouge_l', 'exact_match',
  'seconds'}, ...], 'infill_token_accuracy' (with eval.infill_captions > 0)}.
  """
  workdir = checkpointing.ensure_writable_dir(workdir)
  model = generation.load(config, workdir, config.sampling.use_ema)
  step = model.step
  source = model.task.eval_source()
  if config.method != 'bit_diffusion' or not config.eval.sweep_steps:
    settings = [_sampling_setting(config)]
  else:
    settings = list(itertools.product(config.eval.sweep_steps, config.eval.sweep_td or (0.0,)))
  results = []
  for steps, td in settings:
    start = time.time()
    _, predictions, references = caption_source(  # AR and GGM ignore steps and td.
        model, source, config.eval.num_images, engine.seed_key(config.seed, 'eval_samples'),
        steps=int(steps), td=float(td))
    scores = scoring.score(predictions, references)
    row = dict(setting=_setting_name(config, steps, td), steps=int(steps), td=float(td),
               seconds=round(time.time() - start, 1), **scores)
    logging.info('Step %d, %s: %s', step, row['setting'], scores)
    results.append(row)
  output = {'step': step, 'num_images': len(predictions), 'results': results}
  if config.eval.infill_captions:  # One token removed from each held-out caption, filled.
    output['infill_token_accuracy'] = infill.token_accuracy(config, model,
                                                            config.eval.infill_captions)
  if jax.process_index() == 0:
    base = outputs.reserve(os.path.join(workdir, 'eval', f'captions_{step}'), ('.json', '.md'))
    with open(base + '.json', 'w') as f:
      json.dump(output, f, indent=2)
    with open(base + '.md', 'w') as f:
      f.write(results_table(results))
    writer = metric_writer.create_writer(workdir)
    writer.write_scalars(step, {f'eval/{results[-1]["setting"]}/{k}': results[-1][k]
                                for k in ('bleu4', 'cider', 'rouge_l', 'exact_match')})
    writer.close()
    logging.info('Wrote %s.json and .md', base)
  return output


def _sampling_setting(config) -> tuple[int, float]:
  """(steps, td) of config.sampling; (0, 0.0) for the AR baseline and GGM, which have none."""
  if config.method != 'bit_diffusion':
    return 0, 0.0
  return config.sampling.steps, config.sampling.td


def results_table(results: list[dict]) -> str:
  """A Markdown table of the sweep: setting, BLEU-4, CIDEr, ROUGE-L, exact match, seconds."""
  lines = ['| setting | BLEU-4 | CIDEr | ROUGE-L | exact match | seconds |',
           '| --- | --- | --- | --- | --- | --- |']
  lines += [f'| {r["setting"]} | {r["bleu4"]:.3f} | {r["cider"]:.3f} | {r["rouge_l"]:.3f} | '
            f'{r["exact_match"]:.1%} | {r["seconds"]} |' for r in results]
  return '\n'.join(lines) + '\n'


def write_tokenizer(config) -> str:
  """Trains SentencePiece on the training captions and writes it to `tokenizer.path`."""
  if not config.tokenizer.path:
    raise ValueError('Set --config.tokenizer.path=FILE.model to write the tokenizer to.')
  captions = data_lib.create_source(config.data, 'train').all_captions()
  tokens_lib.train_tokenizer(captions, config.tokenizer.vocab_size, config.tokenizer.model_type,
                             config.tokenizer.path)
  logging.info('Trained a %d-piece %s tokenizer on %d captions: %s', config.tokenizer.vocab_size,
               config.tokenizer.model_type, len(captions), config.tokenizer.path)
  return config.tokenizer.path
