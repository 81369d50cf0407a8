"""Caption metrics: BLEU-4, CIDEr and ROUGE-L with the official COCO scorers, and exact match.

The scorers are those of `pycocoevalcap` (the COCO caption evaluation code). Its PTB tokenizer
runs Stanford CoreNLP (Java), as do METEOR and SPICE; those are skipped. Captions are normalised
here instead, the way the PTB tokenizer's output looks: lower case, punctuation split off and
dropped (`normalize`). On COCO this differs from the official tokenisation only in rare cases
(contractions, hyphens), so scores are close to, not identical with, published ones.
"""

import re
from typing import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

_PUNCTUATION = re.compile(r"[.,!?;:'`\"()\[\]{}\-]+")


def normalize(caption: str) -> str:
  """Lower case, punctuation removed, single spaces."""
  return ' '.join(_PUNCTUATION.sub(' ', caption.lower()).split())


def _as_dicts(predictions: Sequence[str], references: Sequence[Sequence[str]]):
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions for {len(references)} reference lists.')
  # An empty prediction would make the scorers fail; a lone dot scores zero like it should.
  res = {i: [normalize(p) or '.'] for i, p in enumerate(predictions)}
  gts = {i: [normalize(r) for r in refs] for i, refs in enumerate(references)}
  return gts, res


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """Fraction of predictions equal (after `normalize`) to one of their references."""
  gts, res = _as_dicts(predictions, references)
  return sum(res[i][0] in gts[i] for i in res) / max(1, len(res))


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """Corpus BLEU-4 (COCO's Bleu scorer), in [0, 1]."""
  gts, res = _as_dicts(predictions, references)
  return float(Bleu(4).compute_score(gts, res, verbose=0)[0][3])


def score(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
  """{'bleu4', 'cider', 'rouge_l', 'exact_match'} of the predictions (one per image)."""
  gts, res = _as_dicts(predictions, references)
  return {'bleu4': float(Bleu(4).compute_score(gts, res, verbose=0)[0][3]),
          'cider': float(Cider().compute_score(gts, res)[0]),
          'rouge_l': float(Rouge().compute_score(gts, res)[0]),
          'exact_match': exact_match(predictions, references)}
