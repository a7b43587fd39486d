"""NER word -> subword label alignment (llmtune.tasks.ner.align_labels and NERTask.preprocess)."""

from __future__ import annotations

import pytest

from llmtune.tasks.base import IGNORE_INDEX
from llmtune.tasks.ner import NERTask, align_labels

X = IGNORE_INDEX
# Labels: 0 O, 1 B-PER, 2 I-PER, 3 B-LOC, 4 I-LOC
B_TO_I = {1: 2, 3: 4}


def test_first_subword_carries_the_label_rest_ignored():
    # [CLS] Anna(2 pieces) lives Oslo(3 pieces) [SEP]
    word_ids = [None, 0, 0, 1, 2, 2, 2, None]
    labels = align_labels(word_ids, [1, 0, 3], label_all_tokens=False, b_to_i=B_TO_I)
    assert labels == [X, 1, X, 0, 3, X, X, X]


def test_special_tokens_always_ignored_even_with_label_all_tokens():
    word_ids = [None, 0, None, None]
    labels = align_labels(word_ids, [0], label_all_tokens=True, b_to_i=B_TO_I)
    assert labels == [X, 0, X, X]


def test_label_all_tokens_turns_b_into_i_after_the_first_subword():
    word_ids = [None, 0, 0, 0, 1, 1, 2, 2, None]
    labels = align_labels(word_ids, [1, 2, 0], label_all_tokens=True, b_to_i=B_TO_I)
    #           CLS  B-PER I-PER I-PER  I-PER I-PER  O O  SEP
    assert labels == [X, 1, 2, 2, 2, 2, 0, 0, X]


def test_label_all_tokens_keeps_b_without_an_i_counterpart():
    # B-MISC (5) has no I-MISC in the label set: the label is repeated as is.
    labels = align_labels([0, 0], [5], label_all_tokens=True, b_to_i=B_TO_I)
    assert labels == [5, 5]


def test_adjacent_words_with_same_label_each_get_their_label():
    # Two one-piece words in a row, both B-: the word boundary, not the label, decides.
    labels = align_labels([None, 0, 1, None], [1, 1], label_all_tokens=False, b_to_i=B_TO_I)
    assert labels == [X, 1, 1, X]


# ------------------------------------------------------------------ through a real fast tokenizer
@pytest.fixture(scope="module")
def ner_raw():
    from datasets import Dataset, DatasetDict

    rows = [
        {"tokens": ["Anna", "Berg", "lives", "in", "Oslo", "."], "tags": ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]},
        {"tokens": ["Unbelievably", ",", "Stormhavnsted", "won"], "tags": ["O", "O", "B-LOC", "O"]},
        {"tokens": ["Mr", "Bartholomew", "Whitcombe", "left"], "tags": ["O", "B-PER", "I-PER", "O"]},
        {"tokens": ["They", "flew", "to", "New", "Zealand"], "tags": ["O", "O", "O", "B-LOC", "I-LOC"]},
    ]
    return DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows[:2])})


@pytest.mark.parametrize("label_all_tokens", [False, True])
def test_preprocess_aligns_through_a_fast_tokenizer(bert_tok, ner_raw, label_all_tokens):
    task = NERTask(label_all_tokens=label_all_tokens, max_length=128)
    task.setup(ner_raw)
    maps = task.model_kwargs()
    assert maps["num_labels"] == len(task.labels) == 5
    label2id = maps["label2id"]
    data = task.preprocess(ner_raw, bert_tok)

    for split in ("train", "validation"):
        for i, row in enumerate(data[split]):
            words = ner_raw[split][i]["tokens"]
            tags = ner_raw[split][i]["tags"]
            ids, labels, word_labels = row["input_ids"], row["labels"], row["word_labels"]
            assert len(labels) == len(ids) == len(word_labels)
            # The evaluation labels always hold exactly one label per word, in word order.
            kept = [label for label in word_labels if label != X]
            assert kept == [label2id[t] for t in tags]
            # Special tokens ([CLS] first, [SEP] last) are never labelled.
            assert labels[0] == X and labels[-1] == X
            # Some word must have been split for the test to say anything about subwords.
            pieces = bert_tok(words, is_split_into_words=True).word_ids()
            assert len(pieces) - 2 > len(words)
            labelled = sum(label != X for label in labels)
            if label_all_tokens:
                assert labelled == len(pieces) - 2  # every subword of every word
            else:
                assert labelled == len(words)
                assert labels == word_labels


def test_preprocess_label_all_tokens_marks_continuations_inside(bert_tok, ner_raw):
    task = NERTask(label_all_tokens=True)
    task.setup(ner_raw)
    data = task.preprocess(ner_raw, bert_tok)
    row = data["train"][1]
    word_ids = bert_tok(ner_raw["train"][1]["tokens"], is_split_into_words=True).word_ids()
    b_loc, i_loc = task.labels.index("B-LOC"), task.labels.index("I-LOC")
    positions = [k for k, w in enumerate(word_ids) if w == 2]  # "Stormhavnsted"
    assert len(positions) > 1
    assert row["labels"][positions[0]] == b_loc
    assert all(row["labels"][k] == i_loc for k in positions[1:])


def test_preprocess_truncation_keeps_lengths_equal(bert_tok, ner_raw):
    task = NERTask(max_length=6)
    task.setup(ner_raw)
    data = task.preprocess(ner_raw, bert_tok)
    for row in data["train"]:
        assert len(row["input_ids"]) <= 6
        assert len(row["labels"]) == len(row["input_ids"]) == len(row["word_labels"])
