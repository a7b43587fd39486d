"""Scores of generated text against references, from the libraries that define them.

- ROUGE (`rouge-score`, Google's reference implementation): per example F1 of ROUGE-1, -2, -L
  and -Lsum, with the Porter stemmer (nltk's; it needs no downloaded data), averaged over the
  split, on a 0-100 scale as the Hugging Face examples report it. rouge-score lowercases and
  keeps only a-z and 0-9, so it suits English-like text. ROUGE-Lsum treats each line of a text
  as a sentence; texts are split into sentences here (after . ! ? followed by a space), since
  nltk's sentence splitter would need a download. The standard error of each is the spread of
  its per-example scores over sqrt(n).
- BLEU and chrF (`sacrebleu`, the standard for reporting them): corpus scores with sacrebleu's
  defaults (13a tokenization; chrF with character 6-grams, beta 2). BLEU is not a mean of
  per-example scores, so its standard error comes from sacrebleu's bootstrap resampling of the
  examples (1000 resamples, its fixed seed): half its 95% interval over 1.96.
"""

from __future__ import annotations

import math
import re

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
BOOTSTRAP_SAMPLES = 1000
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def sentences_per_line(text: str) -> str:
    """The text with one sentence per line (what ROUGE-Lsum reads as sentence boundaries)."""
    return "\n".join(part for part in _SENTENCE_END.split(text.strip()) if part)


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """rouge1/2/L/Lsum (mean F1 x 100) and the standard error of each."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    per_type: dict[str, list[float]] = {name: [] for name in ROUGE_TYPES}
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(sentences_per_line(reference), sentences_per_line(prediction))
        for name in ROUGE_TYPES:
            per_type[name].append(100 * scores[name].fmeasure)
    out = {}
    for name, values in per_type.items():
        out[name], out[f"{name}_stderr"] = _mean_stderr(values)
    return out


def bleu_chrf(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU (with its bootstrap standard error) and chrF, both 0-100."""
    from sacrebleu.metrics import BLEU, CHRF

    if not predictions:
        return {"bleu": 0.0, "bleu_stderr": 0.0, "chrf": 0.0}
    refs = [list(references)]
    resamples = BOOTSTRAP_SAMPLES if len(predictions) > 1 else 1
    bleu = BLEU().corpus_score(list(predictions), refs, n_bootstrap=resamples)
    stderr = bleu._ci / 1.96 if resamples > 1 else 0.0  # sacrebleu keeps the 95% half-width there
    return {"bleu": float(bleu.score), "bleu_stderr": float(stderr), "chrf": float(CHRF().corpus_score(list(predictions), refs).score)}
