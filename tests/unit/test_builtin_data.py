"""The built-in data sets: deterministic, well-formed, balanced, and with held-out names."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from llmtune.data.builtin import BUILTIN_KINDS, builtin_splits
from llmtune.errors import UserError

SPLITS = ("train", "validation", "test")
GENERATED = ("ner", "classification")


@pytest.fixture(scope="module")
def ner() -> dict[str, list[dict]]:
    return builtin_splits("ner")


@pytest.fixture(scope="module")
def classification() -> dict[str, list[dict]]:
    return builtin_splits("classification")


@pytest.fixture(scope="module")
def text() -> dict[str, list[dict]]:
    return builtin_splits("text")


def _entities(row: dict) -> list[tuple[str, str]]:
    """(type, surface string) of every entity in an IOB2-tagged row."""
    found: list[tuple[str, list[str]]] = []
    for token, tag in zip(row["tokens"], row["tags"], strict=True):
        if tag.startswith("B-"):
            found.append((tag[2:], [token]))
        elif tag.startswith("I-"):
            found[-1][1].append(token)
    return [(kind, " ".join(words)) for kind, words in found]


def test_kinds_are_listed() -> None:
    assert BUILTIN_KINDS[:5] == ("ner", "classification", "text", "sft", "qa")


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(UserError, match="ner, classification, text.*Did you mean 'ner'"):
        builtin_splits("nerr")


@pytest.mark.parametrize("kind", GENERATED)
def test_same_seed_same_rows_other_seed_other_rows(kind: str) -> None:
    assert builtin_splits(kind, seed=3) == builtin_splits(kind, seed=3)
    assert builtin_splits(kind, seed=3)["train"] != builtin_splits(kind, seed=4)["train"]


@pytest.mark.parametrize("kind", BUILTIN_KINDS)
def test_rows_do_not_depend_on_hash_seed(kind: str) -> None:
    # String hashing differs between interpreters; the data must not.
    script = (
        "from llmtune.data.builtin import builtin_splits; "
        f"s = builtin_splits({kind!r}, seed=1); print(repr(s['test'][:20]), len(s['train']))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={"PYTHONHASHSEED": hash_seed, "PYTHONPATH": ":".join(sys.path)},
            capture_output=True, text=True, check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(outputs) == 1


@pytest.mark.parametrize("kind", GENERATED)
def test_split_sizes(kind: str) -> None:
    splits = builtin_splits(kind)
    assert {name: len(rows) for name, rows in splits.items()} == {
        "train": 2000, "validation": 300, "test": 300,
    }


def test_ner_rows_are_valid_iob2(ner: dict[str, list[dict]]) -> None:
    allowed = {"O"} | {f"{p}-{t}" for p in "BI" for t in ("PER", "LOC", "ORG", "MISC")}
    for rows in ner.values():
        for row in rows:
            assert set(row) == {"tokens", "tags"}
            assert len(row["tokens"]) == len(row["tags"]) > 0
            assert all(token and " " not in token for token in row["tokens"])
            previous = "O"
            for tag in row["tags"]:
                assert tag in allowed
                if tag.startswith("I-"):
                    assert previous in (f"B-{tag[2:]}", tag), row
                previous = tag


def test_ner_has_every_type_and_zero_to_three_entities(ner: dict[str, list[dict]]) -> None:
    for split in SPLITS:
        per_row = [_entities(row) for row in ner[split]]
        types = {kind for entities in per_row for kind, _ in entities}
        assert types == {"PER", "LOC", "ORG", "MISC"}
        counts = Counter(len(entities) for entities in per_row)
        assert set(counts) == {0, 1, 2, 3}


def test_ner_has_multi_token_entities_and_separate_punctuation(ner: dict[str, list[dict]]) -> None:
    rows = ner["train"]
    assert any(tag.startswith("I-") for row in rows for tag in row["tags"])
    punctuation = [tag for row in rows for token, tag in zip(row["tokens"], row["tags"], strict=True) if token in ",."]
    assert punctuation and set(punctuation) == {"O"}


def test_ner_keeps_natural_casing(ner: dict[str, list[dict]]) -> None:
    names = [surface for row in ner["train"] for kind, surface in _entities(row) if kind == "PER"]
    assert all(name[0].isupper() for name in names)


def test_ner_test_split_has_names_never_seen_in_training(ner: dict[str, list[dict]]) -> None:
    train_names = {entity for row in ner["train"] for entity in _entities(row)}
    test_names = {entity for row in ner["test"] for entity in _entities(row)}
    unseen = test_names - train_names
    # About half of the evaluation names come from the held-out lists.
    assert len(unseen) > 0.2 * len(test_names)
    assert test_names & train_names
    unseen_places = {name for kind, name in unseen if kind == "LOC"}
    assert unseen_places, "some test places must never occur in training"


def test_classification_labels_are_balanced(classification: dict[str, list[dict]]) -> None:
    for split in SPLITS:
        counts = Counter(row["label"] for row in classification[split])
        assert set(counts) == {"business", "science", "sports", "world"}
        assert max(counts.values()) - min(counts.values()) <= 1


def test_classification_texts_are_short_varied_sentences(classification: dict[str, list[dict]]) -> None:
    rows = classification["train"]
    assert all(set(row) == {"text", "label"} and isinstance(row["text"], str) for row in rows)
    lengths = [len(row["text"].split()) for row in rows]
    assert min(lengths) >= 5 and max(lengths) <= 50
    assert len({row["text"] for row in rows}) > 0.95 * len(rows)


def test_text_corpus_is_real_prose_in_disjoint_splits(text: dict[str, list[dict]]) -> None:
    texts = {split: [row["text"] for row in text[split]] for split in SPLITS}
    total = sum(len(rows) for rows in texts.values())
    assert total > 1000
    for split in ("validation", "test"):
        assert 0.02 * total < len(texts[split]) < 0.1 * total
    assert all(len(t) >= 40 and "  " not in t and "\n" not in t for rows in texts.values() for t in rows)
    as_sets = [set(rows) for rows in texts.values()]
    assert sum(len(s) for s in as_sets) == len(set().union(*as_sets))


def test_text_ignores_seed(text: dict[str, list[dict]]) -> None:
    assert builtin_splits("text", seed=7) == text


def _entity_counts(rows: list[dict]) -> Counter:
    """(lower-cased entity text, type) counts of IOB2 rows."""
    found: Counter = Counter()
    for row in rows:
        current: list[str] = []
        kind = ""
        for token, tag in [*zip(row["tokens"], row["tags"], strict=True), ("", "O")]:
            if tag.startswith("I-"):
                current.append(token)
                continue
            if current:
                found[" ".join(current).lower(), kind] += 1
            current, kind = ([token], tag[2:]) if tag.startswith("B-") else ([], "")
    return found


def test_ner_domains_conflict_only_where_sports_names_teams_after_cities() -> None:
    """The sequence's last domain tags the news domain's places ORG (teams named after cities):
    the same lower-cased words (MiniLM is uncased) that news tags LOC. People and organisation
    names stay each domain's own, so nothing else is rehearsed or contradicted."""
    from llmtune.data.builtin.sequences import sequence_splits

    news, medical, sports = (_entity_counts(sequence_splits(f"ner_{d}")["train"]) for d in ("news", "medical", "sports"))
    news_places = {text for text, kind in news if kind == "LOC"}
    team_names = {text for text, kind in sports if kind == "ORG"}
    assert len(team_names) >= 10 and team_names <= news_places  # every team is a news place
    assert sum(n for (text, kind), n in sports.items() if kind == "LOC" and text in news_places) > 100  # venues too: context decides
    people = [{text for text, kind in domain if kind == "PER"} for domain in (news, medical, sports)]
    assert not people[0] & people[1] and not people[0] & people[2] and not people[1] & people[2]
    assert not {text for text, kind in medical if kind == "ORG"} & {text for text, kind in news if kind == "ORG"}
