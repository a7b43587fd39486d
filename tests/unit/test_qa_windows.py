"""task=qa pieces without a model: windows and their labels, n-best post-processing over
windows, the data checks, SQuAD JSON reading and the built-in data."""

from __future__ import annotations

import json
import re

import pytest
import torch
from datasets import Dataset, DatasetDict, DatasetInfo

from llmtune.errors import UserError
from llmtune.tasks.qa import NOT_CONTEXT, QATask, best_answer, check_row, window_candidates
from llmtune.tasks.squad import squad_metrics

FILLER = "The river floods every few years and the market sells fish on Sunday."
CONTEXT = " ".join([FILLER] * 6 + ["Anna Berg was born in Lima in 1975."])
QUESTION = "Where was Anna Berg born?"


@pytest.fixture(scope="module")
def tok():
    from llmtune.tokenization import train_tokenizer

    return train_tokenizer([CONTEXT, QUESTION, FILLER], decoder=False, vocab_size=150)


def _raw(rows: list[dict], split: str = "validation") -> DatasetDict:
    return DatasetDict({split: Dataset.from_list(rows, info=DatasetInfo(description=f"data.{split}_file: qa.jsonl"))})


def test_an_answer_in_a_later_window_is_labelled_there(tok):
    task = QATask(max_length=48, doc_stride=12)
    start = CONTEXT.index("Lima")
    raw = _raw([{"context": CONTEXT, "question": QUESTION, "answers": {"text": ["Lima"], "answer_start": [start]}}])
    task.setup(raw)
    windows = task.preprocess(raw, tok)["validation"]
    assert len(windows) > 2  # the context does not fit one window
    assert all(len(ids) <= 48 for ids in windows["input_ids"])
    labelled = [w for w in windows if w["labels"] != [w["cls"], w["cls"]]]
    assert len(labelled) >= 1 and labelled[0] is not windows[0]
    assert windows[0]["labels"] == [windows[0]["cls"]] * 2  # the answer is not in the first window
    for w in labelled:
        s, e = w["labels"]
        assert CONTEXT[w["offsets"][s][0]:w["offsets"][e][1]] == "Lima"
    # Neighbouring windows overlap by doc_stride tokens of the context.
    first, second = ([tuple(o) for o in w["offsets"] if o[0] >= 0] for w in windows.select(range(2)))
    assert first[-12:] == second[:12]
    assert all(w["example"] == 0 for w in windows)


def test_question_tokens_and_padding_are_never_candidates():
    offsets = [NOT_CONTEXT, NOT_CONTEXT, NOT_CONTEXT, (0, 4), (5, 8), (9, 13)]
    start = torch.tensor([0.0, 9.0, 9.0, 1.0, 2.0, 0.5, -1e30])  # the last position is padding
    end = torch.tensor([0.0, 9.0, 9.0, 0.5, 1.0, 3.0, -1e30])
    spans = window_candidates(start, end, offsets, n_best=20, max_answer_length=30)
    assert spans[0] == (5.0, 5, 13)  # start token 4, end token 5: the best pair inside the context
    assert all(s >= 0 for _, s, _ in spans)
    assert all(s < e for _, s, e in spans)
    # An end before its start, or a span longer than max_answer_length, is not proposed.
    assert (2.0 + 0.5, 5, 4) not in spans
    short = window_candidates(start, end, offsets, n_best=20, max_answer_length=1)
    assert {(s, e) for _, s, e in short} == {(0, 4), (5, 8), (9, 13)}


def test_best_answer_over_windows_and_the_no_answer_threshold():
    context = "Tom lives in Oslo. Anna lives in Lima."
    windows = [
        {"null": 1.0, "spans": [(2.0, 13, 17)]},              # "Oslo"
        {"null": 4.0, "spans": [(6.0, 33, 37), (2.5, 13, 17)]},  # "Lima", and Oslo again, from the overlap
    ]
    out = best_answer(windows, context, n_best=20, with_negative=False, threshold=0.0)
    assert (out["answer"], out["start"], out["end"]) == ("Lima", 33, 37)
    assert 0.5 < out["score"] <= 1.0 and "no_answer" not in out
    # v2: the no-answer score is the lowest over windows (1.0); it must beat 6.0 by more than the threshold.
    assert best_answer(windows, context, n_best=20, with_negative=True, threshold=0.0)["no_answer"] is False
    strong_null = [{"null": 9.0, "spans": w["spans"]} for w in windows]
    out = best_answer(strong_null, context, n_best=20, with_negative=True, threshold=0.0)
    assert out == {"answer": "", "start": None, "end": None, "score": out["score"], "no_answer": True, "null_score_diff": 3.0}
    assert best_answer(strong_null, context, n_best=20, with_negative=True, threshold=3.5)["answer"] == "Lima"


def test_bad_rows_are_one_line_with_file_and_row():
    task = QATask()
    good = {"context": "Anna lives in Lima.", "question": "Where?", "answers": {"text": ["Lima"], "answer_start": [14]}}
    bad = {**good, "answers": {"text": ["Lima"], "answer_start": [13]}}
    with pytest.raises(UserError, match=r"data.validation_file: qa.jsonl row 2: answer 'Lima' does not start at answer_start 13 .*occurs at character 14"):
        task.setup(_raw([good, bad]))
    with pytest.raises(UserError, match="row 1: 'answers' has 1 texts but 2 answer_start"):
        check_row(good["context"], "Where?", {"text": ["Lima"], "answer_start": [14, 3]}, "row 1")
    with pytest.raises(UserError, match="row 1: 'question' is"):
        check_row(good["context"], " ", good["answers"], "row 1")
    # SQuAD-style lists of answer objects are read too.
    assert check_row(good["context"], "Where?", [{"text": "Lima", "answer_start": 14}], "row 1") is True


def test_version_2_follows_the_data_unless_set():
    answerable = {"context": "Anna lives in Lima.", "question": "Where?", "answers": {"text": ["Lima"], "answer_start": [14]}}
    none = {**answerable, "answers": {"text": [], "answer_start": []}}
    auto = QATask()
    auto.setup(_raw([answerable]))
    assert auto.with_negative is False and auto.state()["version_2_with_negative"] is False
    auto.setup(_raw([answerable, none]))
    assert auto.with_negative is True
    with pytest.raises(UserError, match=r"row 2: the question has no answer, but task.version_2_with_negative=false"):
        QATask(version_2_with_negative=False).setup(_raw([answerable, none]))
    with pytest.raises(UserError, match="task.doc_stride=128"):
        QATask(max_length=256, doc_stride=128)


def test_squad_json_is_read_as_one_row_per_question(tmp_path):
    from llmtune.data.readers import read_rows

    doc = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "Anna lives in Lima.", "qas": [
        {"id": "q1", "question": "Where does Anna live?", "answers": [{"text": "Lima", "answer_start": 14}], "is_impossible": False},
        {"id": "q2", "question": "Where does Tom live?", "answers": [], "plausible_answers": [{"text": "Lima", "answer_start": 14}], "is_impossible": True},
    ]}]}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc))
    rows = read_rows(path)
    assert [r["id"] for r in rows] == ["q1", "q2"]
    assert rows[0]["answers"] == {"text": ["Lima"], "answer_start": [14]}
    assert rows[1]["answers"] == {"text": [], "answer_start": []}
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "x"}]}]}))
    with pytest.raises(UserError, match=r"train.json article 1 paragraph 1 has no 'qas' list"):
        read_rows(path)


def test_builtin_data_is_consistent_and_not_solved_by_a_baseline():
    from llmtune.data.builtin import builtin_splits

    test = builtin_splits("qa")["test"]  # the same in every process: tests/unit/test_builtin_data.py
    for row in test:
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True):
            assert row["context"][start:start + len(text)] == text
    assert 0.05 < sum(not r["answers"]["text"] for r in test) / len(test) < 0.3
    assert sum(len(r["context"]) > 1200 for r in test) > 30  # several windows at max_length 256
    golds = [r["answers"]["text"] for r in test]
    first_sentence = [r["context"].split(". ")[0] for r in test]
    first_name = [re.search(r"[A-Z][a-z]+(?: [A-Z][a-z]+)*", r["context"]).group() for r in test]
    for baseline in (first_sentence, first_name, [""] * len(test)):  # the last: always "no answer"
        assert squad_metrics(baseline, golds, with_negative=True)["f1"] < 0.15
