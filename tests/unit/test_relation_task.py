"""task=relation in process: entity markers, the checks on spans, the metric, the built-in data,
the encoding (marker positions, long sentences) and the entity-start model with each PEFT method."""

from __future__ import annotations

import copy
import json
from collections import Counter, defaultdict

import pytest
import torch

from llmtune.errors import UserError
from llmtune.tasks.relation import (
    AutoModelForEntityRelation,
    RelationTask,
    insert_markers,
    micro_f1_stderr,
    relation_metrics,
)


def _span(start, end, kind):
    return {"start": start, "end": end, "type": kind}


# ------------------------------------------------------------------ markers
def test_markers_wrap_each_entity_at_its_words():
    tokens = "Anna Berg works for Bluepeak Bank .".split()
    words, starts, (first, last) = insert_markers(tokens, _span(0, 2, "PER"), _span(4, 6, "ORG"))
    assert words == ["[E1:PER]", "Anna", "Berg", "[/E1:PER]", "works", "for", "[E2:ORG]", "Bluepeak", "Bank", "[/E2:ORG]", "."]
    assert [words[i] for i in starts] == ["[E1:PER]", "[E2:ORG]"]
    assert (first, last) == (0, 9)


def test_head_after_tail_keeps_roles_and_order():
    tokens = "Bluepeak Bank hired Anna Berg".split()
    words, starts, _ = insert_markers(tokens, _span(3, 5, "PER"), _span(0, 2, "ORG"))
    assert words == ["[E2:ORG]", "Bluepeak", "Bank", "[/E2:ORG]", "hired", "[E1:PER]", "Anna", "Berg", "[/E1:PER]"]
    assert starts == [5, 0]  # head's start marker first in the list, wherever it is


def test_adjacent_entities_close_before_they_open():
    words, starts, _ = insert_markers(["Oslo", "Anna"], _span(1, 2, "PER"), _span(0, 1, None))
    assert words == ["[E2]", "Oslo", "[/E2]", "[E1:PER]", "Anna", "[/E1:PER]"]
    assert starts == [3, 0]


# ------------------------------------------------------------------ checks
def _write(tmp_path, rows) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _setup(path):
    from datasets import DatasetDict

    from llmtune.data.load import read_split

    task = RelationTask()
    task.setup(DatasetDict({"train": read_split(path, "train_file", task, {})}))
    return task


GOOD = {"tokens": ["a", "b", "c"], "head": _span(0, 1, "PER"), "tail": _span(2, 3, "ORG"), "relation": "r"}


@pytest.mark.parametrize("head, tail, says", [
    (_span(0, 4, "PER"), _span(2, 3, "ORG"), "outside the sentence's 3 tokens"),
    (_span(1, 1, "PER"), _span(2, 3, "ORG"), "end is exclusive"),
    (_span(0, 2, "PER"), _span(1, 3, "ORG"), "overlap"),
    ({"start": 0, "type": "PER"}, _span(2, 3, "ORG"), "whole-number"),
    (_span(0, 1, "A B"), _span(2, 3, "ORG"), "type 'A B'"),
])
def test_a_bad_span_is_one_line_naming_file_and_row(tmp_path, head, tail, says):
    path = _write(tmp_path, [GOOD, {**GOOD, "head": head, "tail": tail}])
    with pytest.raises(UserError) as err:
        _setup(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "row 2" in message and says in message


def test_types_and_labels_come_from_training_and_unknown_types_are_refused(tmp_path):
    from datasets import Dataset, DatasetDict

    task = _setup(_write(tmp_path, [GOOD, {**GOOD, "head": _span(0, 1, None), "relation": "no_relation"}]))
    assert task.entity_types == ["", "ORG", "PER"]
    assert task.labels == ["no_relation", "r"]
    assert "[E1]" in task.special_tokens() and "[/E2:PER]" in task.special_tokens()
    restored = RelationTask()
    restored.load_state(json.loads(json.dumps(task.state())))
    assert restored.special_tokens() == task.special_tokens()
    unknown = DatasetDict({"test": Dataset.from_list([{**GOOD, "tail": _span(2, 3, "DATE")}])})
    with pytest.raises(UserError, match="tail type 'DATE' is not an entity type"):
        restored.check_eval(unknown)
    with pytest.raises(UserError, match="head type 'LOC'"):
        restored.read_input({**GOOD, "head": _span(0, 1, "LOC")}, "input 1")


# ------------------------------------------------------------------ metric
def test_micro_f1_leaves_out_the_negative_class():
    labels = ["no_relation", "a", "b"]
    truth = [0, 0, 0, 1, 2, 1]
    pred = [0, 0, 0, 1, 1, 0]  # right on the three negatives, 1 of 3 relations, one wrong relation
    m = relation_metrics(truth, pred, labels, "no_relation")
    # precision 1/2 (two relations predicted), recall 1/3: F1 = 0.4; accuracy counts negatives too
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(1 / 3)
    assert m["micro_f1"] == pytest.approx(0.4)
    assert m["accuracy"] == pytest.approx(4 / 6)
    always_negative = relation_metrics(truth, [0] * 6, labels, "no_relation")
    assert always_negative["micro_f1"] == 0.0 and always_negative["accuracy"] == 0.5
    # with another negative class name, "no_relation" is a relation like any other
    assert relation_metrics(truth, pred, labels, "none")["micro_f1"] == pytest.approx(m["accuracy"])


def test_micro_f1_stderr_shrinks_with_more_examples():
    import numpy as np

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 2000)
    pred = np.where(rng.random(2000) < 0.7, truth, rng.integers(0, 3, 2000))
    small, large = micro_f1_stderr(truth[:100], pred[:100], [1, 2]), micro_f1_stderr(truth, pred, [1, 2])
    assert 0 < large < small < 0.2
    assert micro_f1_stderr(truth, pred, [1, 2]) == large  # fixed seed: the same value each time


# ------------------------------------------------------------------ built-in data
def test_builtin_data_needs_the_words_not_just_the_types():
    from llmtune.data.builtin import builtin_splits

    splits = builtin_splits("relation")
    assert builtin_splits("relation") == splits
    labels = sorted({r["relation"] for r in splits["train"]})
    assert "no_relation" in labels and len(labels) >= 6
    by_types = defaultdict(Counter)
    for r in splits["train"]:
        by_types[(r["head"]["type"], r["tail"]["type"])][r["relation"]] += 1
    assert all(len(counts) >= 2 for counts in by_types.values())
    test = splits["test"]
    truth = [labels.index(r["relation"]) for r in test]
    majority = Counter(r["relation"] for r in splits["train"]).most_common(1)[0][0]
    by_type = [labels.index(by_types[(r["head"]["type"], r["tail"]["type"])].most_common(1)[0][0]) for r in test]
    assert relation_metrics(truth, [labels.index(majority)] * len(test), labels, "no_relation")["micro_f1"] == 0.0
    assert relation_metrics(truth, by_type, labels, "no_relation")["micro_f1"] < 0.5


# ------------------------------------------------------------------ encoding
@pytest.fixture
def task_and_tok(bert_tok):
    from llmtune.tokenization import add_task_tokens

    task = RelationTask(max_length=32)
    task.labels, task.entity_types = ["no_relation", "r"], ["ORG", "PER"]
    tok = copy.deepcopy(bert_tok)  # the session's tokenizer stays without markers
    add_task_tokens(tok, task)
    return task, tok


def test_encoding_points_at_the_start_markers(task_and_tok):
    task, tok = task_and_tok
    examples = [("the cat sat on the mat".split(), _span(1, 2, "PER"), _span(5, 6, "ORG")),
                ("the cat sat on the mat".split(), _span(5, 6, "PER"), _span(0, 2, "ORG"))]
    for (_, head, tail), item in zip(examples, task._encode(tok, examples, str), strict=True):
        ids = item["input_ids"]
        h, t = item["entity_starts"]
        assert tok.convert_ids_to_tokens([ids[h], ids[t]]) == [f"[E1:{head['type']}]", f"[E2:{tail['type']}]"]
        assert len(tok.convert_ids_to_tokens(ids)) == len(ids)


def test_a_long_sentence_keeps_a_window_around_its_entities(task_and_tok):
    task, tok = task_and_tok
    tokens = ["the"] * 40 + ["cat", "sat", "on", "mat"] + ["the"] * 40
    item = task._encode(tok, [(tokens, _span(40, 41, "PER"), _span(43, 44, "ORG"))], str)[0]
    assert len(item["input_ids"]) <= task.max_length
    names = tok.convert_ids_to_tokens(item["input_ids"])
    assert [names[p] for p in item["entity_starts"]] == ["[E1:PER]", "[E2:ORG]"]
    assert "[/E2:ORG]" in names and names.count("the") > 10  # context kept on both sides
    far = ["a"] * 5 + ["the"] * 60 + ["b"]
    with pytest.raises(UserError, match=r"row 7: the two entities are \d+ tokens apart"):
        task._encode(tok, [(far, _span(0, 1, "PER"), _span(65, 66, "ORG"))], lambda i: "row 7")


# ------------------------------------------------------------------ the model
def _tiny(task, tok):
    from omegaconf import OmegaConf

    from llmtune.models import load_model

    cfg = OmegaConf.create({"name_or_path": None, "config": {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64},
                            "attn_implementation": None, "pad_vocab_to_multiple_of": None})
    torch.manual_seed(0)
    return load_model(cfg, task, tok, task.model_kwargs())


def _batch(task, tok):
    examples = [("the cat sat".split(), _span(0, 1, "PER"), _span(2, 3, "ORG")), ("a dog".split(), _span(1, 2, "PER"), _span(0, 1, "ORG"))]
    items = task._encode(tok, examples, str)
    for item in items:
        item["labels"] = 1
    return task.collator(tok, train=False)(items)


def test_the_model_saves_and_loads_as_a_transformers_folder(task_and_tok, tmp_path):
    from llmtune.tasks.base import model_inputs

    task, tok = task_and_tok
    model = _tiny(task, tok).eval()
    assert type(model).__name__ == "BertForEntityRelation"
    assert task.special_token_ids == tuple(tok.convert_tokens_to_ids(task.special_tokens()))
    batch = _batch(task, tok)
    logits = model(**model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits
    assert logits.shape == (2, 2)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForEntityRelation.from_pretrained(str(tmp_path)).eval()
    again = loaded(**model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits
    torch.testing.assert_close(again, logits)


@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_peft_trains_the_head_and_lora_the_marker_rows(task_and_tok, method):
    from llmtune.peft.bitfit import BitFit
    from llmtune.peft.lora import LoRA

    task, tok = task_and_tok
    model = (LoRA(r=2, dropout=0.0) if method == "lora" else BitFit()).apply(_tiny(task, tok), task)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in name for name in trainable)
    if method == "lora":
        assert any("trainable_tokens_delta" in name for name in trainable)
        batch = _batch(task, tok)
        labels = batch.pop("labels")
        torch.nn.functional.cross_entropy(model(**batch).logits, labels).backward()
        delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
        assert delta.shape[0] == len(task.special_tokens()) and delta.grad.abs().sum() > 0


def test_new_marker_rows_start_apart(tmp_path):
    """A pretrained model grows rows for the markers; each starts as the mean of its text's
    pieces ('[', 'E', '##1', ...), not as one shared mean that bitfit could never separate."""
    import re

    from omegaconf import OmegaConf

    from conftest import corpus_lines
    from llmtune.models import load_model
    from llmtune.tokenization import add_task_tokens, train_tokenizer

    # A tokenizer that knows the markers' characters (digits, brackets), as real ones do.
    plain_tok = train_tokenizer([*corpus_lines(), "[E1:PER] [/E2:ORG]"], decoder=False, vocab_size=200)
    task, tok = RelationTask(), copy.deepcopy(plain_tok)
    task.labels, task.entity_types = ["no_relation", "r"], ["ORG", "PER"]
    add_task_tokens(tok, task)
    plain = RelationTask()
    plain.labels = task.labels
    base = _tiny(plain, plain_tok)  # a model without marker rows
    base.save_pretrained(tmp_path)
    cfg = OmegaConf.create({"name_or_path": str(tmp_path), "attn_implementation": None, "pad_vocab_to_multiple_of": None,
                            "trust_remote_code": False, "reinit_head": False})
    grown = load_model(cfg, task, tok, task.model_kwargs())
    weight = grown.get_input_embeddings().weight.detach()
    assert weight.shape[0] == len(tok) > len(plain_tok)
    rows = weight[list(task.special_token_ids)]
    assert torch.cdist(rows, rows).add(torch.eye(len(rows)) * 1e9).min() > 1e-3  # pairwise apart
    pieces = tok(" ".join(re.findall(r"\w+|[^\w\s]", "[E1:PER]")), add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(weight[tok.convert_tokens_to_ids("[E1:PER]")], weight[pieces].mean(dim=0))
