"""Exact match and F1 of extractive answers, as the official SQuAD v2.0 evaluation script
computes them (`evaluate-v2.0.py`; `evaluate.load("squad_v2")` wraps the same script but
downloads it, so it cannot be used offline).

Answers are compared after the official normalisation: lower case, punctuation removed, the
articles a/an/the removed, whitespace collapsed. F1 is over the normalised words; each question
takes the best score over its gold answers. A question with no gold answer (SQuAD v2.0's
unanswerable ones) scores 1 when the prediction is empty and 0 otherwise; so does a prediction
that normalises to nothing. For SQuAD v1.1 data (every question answerable) this gives the v1.1
script's numbers. Scores are on a 0..1 scale (the scripts print percentages).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Word-overlap F1 of the normalised answers (v2.0: empty against empty scores 1)."""
    pred_words, gold_words = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_words or not gold_words:
        return float(pred_words == gold_words)
    same = sum((Counter(pred_words) & Counter(gold_words)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_words), same / len(gold_words)
    return 2 * precision * recall / (precision + recall)


def gold_texts(answers: Sequence[str]) -> list[str]:
    """The gold answers a prediction is scored against; [""] for an unanswerable question (as
    the official script: answers that normalise to nothing do not count)."""
    return [a for a in answers if normalize_answer(a)] or [""]


def score_one(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction: the best over the gold answers."""
    golds = gold_texts(answers)
    return max(exact_match(prediction, g) for g in golds), max(f1(prediction, g) for g in golds)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def stderr(values: list[float]) -> float:
    """Standard error of the mean of per-question scores."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def squad_metrics(predictions: Sequence[str], answers: Sequence[Sequence[str]], *, with_negative: bool) -> dict[str, float]:
    """exact, f1 and f1_stderr over the questions; with `with_negative` (SQuAD v2.0) also
    exact and f1 over the answerable (HasAns_) and the unanswerable (NoAns_) questions alone."""
    scores = [score_one(p, a) for p, a in zip(predictions, answers, strict=True)]
    exact, f1s = [s[0] for s in scores], [s[1] for s in scores]
    out = {"exact": _mean(exact), "f1": _mean(f1s), "f1_stderr": stderr(f1s)}
    if with_negative:
        has = [bool(gold_texts(a)[0]) for a in answers]
        for name, keep in (("HasAns", True), ("NoAns", False)):
            chosen = [i for i, h in enumerate(has) if h == keep]
            out[f"{name}_exact"] = _mean([exact[i] for i in chosen])
            out[f"{name}_f1"] = _mean([f1s[i] for i in chosen])
    return out
