"""The SQuAD metric (llmtune/tasks/squad.py) against cases worked out by hand from the
official evaluation scripts' rules."""

from __future__ import annotations

import pytest

from llmtune.tasks.squad import exact_match, f1, normalize_answer, score_one, squad_metrics


@pytest.mark.parametrize(("text", "normalised"), [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an apple,  a pear ", "apple pear"),
    ("Anne and Theodore", "anne and theodore"),      # articles only as whole words
    ("the-the", "thethe"),                           # punctuation goes first: no article is left
    ("U.S.A.", "usa"),
    ("A", ""),
])
def test_normalisation(text, normalised):
    assert normalize_answer(text) == normalised


def test_exact_match_and_f1_after_normalisation():
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0
    # 2 shared words of 4 predicted (precision 1/2) and 2 gold (recall 1): F1 = 2/3.
    assert f1("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 / 3)
    assert f1("Lima", "Oslo") == 0.0
    # Repeated words count as often as both sides have them (a multiset overlap).
    assert f1("Paris Paris", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_best_over_gold_answers():
    assert score_one("Denver Broncos", ["Broncos", "Denver Broncos", "The Broncos"]) == (1.0, 1.0)
    em, f = score_one("the Broncos team", ["Denver Broncos", "Carolina Panthers"])
    assert em == 0.0 and f == pytest.approx(0.5)  # "broncos team" vs "denver broncos"


def test_unanswerable_questions_v2():
    assert score_one("", []) == (1.0, 1.0)           # no answer predicted for a question without one
    assert score_one("Paris", []) == (0.0, 0.0)
    assert score_one("", ["Paris"]) == (0.0, 0.0)
    assert score_one("", ["the"]) == (1.0, 1.0)       # a gold answer that normalises to nothing does not count


def test_squad_metrics_v2_splits_has_and_no_answer():
    predictions = ["Paris", "", "Lima", "Oslo"]
    answers = [["Paris"], [], ["Peru", "Lima"], []]
    m = squad_metrics(predictions, answers, with_negative=True)
    assert m["exact"] == pytest.approx(3 / 4) and m["f1"] == pytest.approx(3 / 4)
    assert m["HasAns_exact"] == 1.0 and m["HasAns_f1"] == 1.0
    assert m["NoAns_exact"] == 0.5 and m["NoAns_f1"] == 0.5
    # Per-question F1 is [1, 1, 1, 0]: standard error sqrt(var / n) with the sample variance.
    assert m["f1_stderr"] == pytest.approx((0.25 / 4) ** 0.5)
    v1 = squad_metrics(predictions[:1], answers[:1], with_negative=False)
    assert set(v1) == {"exact", "f1", "f1_stderr"}
