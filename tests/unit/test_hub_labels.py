"""Hub datasets store labels as ClassLabel ids; tasks must see the label names, as from files."""

from __future__ import annotations

from datasets import ClassLabel, Dataset, Features, List

from llmtune.data.load import _labels_as_names


def test_class_label_ids_become_names_and_hidden_labels_none():
    features = Features({"label": ClassLabel(names=["neg", "pos"]), "tags": List(ClassLabel(names=["O", "B-PER"]))})
    ds = Dataset.from_dict({"label": [1, 0, -1], "tags": [[0, 1], [1], []]}, features=features)
    out = _labels_as_names(ds)
    assert out["label"] == ["pos", "neg", None]
    assert out["tags"] == [["O", "B-PER"], ["B-PER"], []]
