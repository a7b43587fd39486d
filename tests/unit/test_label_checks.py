"""Bad labels are refused in one line, or converted with a note, before any model loads.

NER tag schemes: IOB2 is what the model learns. IOB1 and BIOES/IOBES/BILOU are converted. An
I- that continues no entity, in data that otherwise starts its entities with B-, is refused
(no scheme explains it; reading it as IOB1 would hide a slip in the data), as are tags without
a scheme prefix. Classification: one non-empty label per row; a single class is a warning.
SFT: ShareGPT's from/value keys and human/gpt roles are read as role/content, user/assistant.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, DatasetInfo
from omegaconf import OmegaConf

from llmtune.data.readers import to_dataset
from llmtune.errors import UserError
from llmtune.tasks.base import IGNORE_INDEX
from llmtune.tasks.classification import ClassificationTask
from llmtune.tasks.ner import NERTask, check_sentences, tag_scheme, to_iob2
from llmtune.tasks.sft import SFTTask

ROOT_CONF = Path(__file__).resolve().parents[2] / "conf"


def _split(rows: list[dict], description: str) -> Dataset:
    return Dataset.from_list(rows, info=DatasetInfo(description=description))


def _convert(sentences: list[list[str]]) -> tuple[str, list[list[str]]]:
    scheme = tag_scheme(sentences, "f.conll")
    return scheme, [to_iob2(tags, scheme) for tags in sentences]


# ------------------------------------------------------------------ NER tag schemes
def test_iob2_is_kept_as_it_is():
    sentences = [["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "B-PER", "I-PER"]]
    assert _convert(sentences) == ("IOB2", sentences)


def test_iob1_becomes_iob2():
    # IOB1: I- starts an entity; B- only splits two adjacent entities of the same type.
    sentences = [["I-PER", "I-PER", "O", "I-LOC"], ["I-PER", "B-PER", "O", "I-ORG", "I-LOC"]]
    assert _convert(sentences) == ("IOB1", [
        ["B-PER", "I-PER", "O", "B-LOC"],
        ["B-PER", "B-PER", "O", "B-ORG", "B-LOC"],
    ])


@pytest.mark.parametrize("sentences", [
    [["B-PER", "I-PER", "E-PER", "O", "S-LOC"], ["S-PER", "S-PER"]],   # BIOES / IOBES
    [["B-PER", "I-PER", "L-PER", "O", "U-LOC"], ["U-PER", "U-PER"]],   # BILOU
], ids=["bioes", "bilou"])
def test_bioes_and_bilou_become_iob2(sentences):
    assert _convert(sentences) == ("BIOES", [["B-PER", "I-PER", "I-PER", "O", "B-LOC"], ["B-PER", "B-PER"]])


def test_i_without_b_in_iob2_data_is_refused_naming_sentence_and_word():
    sentences = [["B-PER", "I-PER", "O"], ["O", "O", "I-LOC"], ["I-ORG"]]
    with pytest.raises(UserError) as err:
        tag_scheme(sentences, "data.train_file: /d/x.conll")
    message = str(err.value)
    assert message.startswith("data.train_file: /d/x.conll sentence 2 word 3: tag 'I-LOC' continues no entity")
    assert "the word before is tagged 'O'" in message and "B-LOC" in message
    assert "(sentences with such a tag: 2)" in message
    assert "\n" not in message


def test_refusal_names_the_source_sentence_number():
    # After data.validation_split the rows are shuffled: errors name the file's sentence.
    with pytest.raises(UserError, match="sentence 41 word 1: tag 'I-LOC'"):
        tag_scheme([["B-PER"], ["I-LOC"]], "f.conll", numbers=[7, 41])


def test_broken_bioes_is_refused():
    with pytest.raises(UserError, match=r"sentence 1 word 3: tag 'E-LOC' continues no entity.*BIOES.*Start the entity with S-LOC or B-LOC"):
        tag_scheme([["S-PER", "O", "E-LOC"]], "f.conll")


@pytest.mark.parametrize(("tags", "expected"), [
    (["PER", "O"], r"word 1: tag 'PER' is not an IOB tag.*B-PER, I-PER"),
    ([3, 0], r"word 1: tag 3 is not an IOB tag.*Numbers are class ids"),
    (["B-PER", None], r"word 2 has no tag \(null\)"),
    (["B-PER", ""], r"word 2 has no tag \(empty\)"),
])
def test_tags_that_are_no_iob_tags_are_refused(tags, expected):
    with pytest.raises(UserError, match=expected):
        check_sentences([["Anna", "lives"]], [tags], "f.jsonl")


@pytest.mark.parametrize(("words", "tags", "counts"), [
    (["Anna", "lives", "here"], ["B-PER", "O"], "3 tokens but 2 tags"),
    (["Anna", "lives"], ["B-PER", "O", "O"], "2 tokens but 3 tags"),
])
def test_tag_count_must_match_token_count_both_ways(words, tags, counts):
    with pytest.raises(UserError, match=f"f.jsonl sentence 2 has {counts}; give every token exactly one tag"):
        check_sentences([["Oslo"], words], [["B-LOC"], tags], "f.jsonl")


def test_ner_task_converts_iob1_and_learns_iob2(bert_tok, caplog):
    train = [{"tokens": ["Anna", "Berg", "lives", "in", "Oslo"], "tags": ["I-PER", "I-PER", "O", "O", "I-LOC"]},
             {"tokens": ["Tom", "met", "Sara"], "tags": ["I-PER", "O", "I-PER"]}]
    dev = [{"tokens": ["Tom", "left", "Oslo"], "tags": ["S-PER", "O", "S-LOC"]}]  # BIOES, on its own
    raw = DatasetDict({"train": _split(train, "data.train_file: t.conll"), "validation": _split(dev, "data.validation_file: d.conll")})
    task = NERTask()
    with caplog.at_level(logging.WARNING, logger="llmtune"):
        task.setup(raw)
        maps = task.model_kwargs()
    assert task.labels == ["B-LOC", "B-PER", "I-PER", "O"] == list(maps["id2label"].values())
    notes = [r.getMessage() for r in caplog.records]
    assert any("t.conll: the tags are IOB1; converted to IOB2" in n for n in notes)
    assert any("d.conll: the tags are BIOES; converted to IOB2" in n for n in notes)
    data = task.preprocess(raw, bert_tok)
    words = [task.labels[i] for i in data["train"][0]["word_labels"] if i != IGNORE_INDEX]
    assert words == ["B-PER", "I-PER", "O", "O", "B-LOC"]
    words = [task.labels[i] for i in data["validation"][0]["word_labels"] if i != IGNORE_INDEX]
    assert words == ["B-PER", "O", "B-LOC"]


def test_ner_all_o_warns(caplog):
    raw = DatasetDict({"train": _split([{"tokens": ["a", "b"], "tags": ["O", "O"]}], "data.train_file: t.conll")})
    with caplog.at_level(logging.WARNING, logger="llmtune"):
        NERTask().setup(raw)
    assert any("every word is tagged O" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ mixed kinds in one column
def test_labels_mixing_numbers_and_text_are_refused_naming_the_row(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": 1}]
    with pytest.raises(UserError) as err:
        to_dataset(rows, path=tmp_path / "x.jsonl", key="data.train_file", description="d")
    message = str(err.value)
    assert message.startswith(f"data.train_file: {tmp_path / 'x.jsonl'} row 3 has 'label' 1 (number) but row 1 has 'pos' (text)")
    assert "\n" not in message


def test_numbers_first_then_text_is_refused_too(tmp_path):
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": "pos"}]
    with pytest.raises(UserError, match=r"row 2 has 'label' 'pos' \(text\) but row 1 has 0 \(number\)"):
        to_dataset(rows, path=tmp_path / "x.jsonl", key="data.train_file", description="d")


def test_tags_mixing_kinds_inside_one_list_are_refused(tmp_path):
    rows = [{"tokens": ["a", "b"], "tags": ["O", "O"]}, {"tokens": ["a", "b"], "tags": ["B-PER", 0]}]
    with pytest.raises(UserError, match=r"row 2 mixes kinds .* inside 'tags'"):
        to_dataset(rows, path=tmp_path / "x.jsonl", key="data.train_file", description="d")


def test_ints_and_floats_or_nulls_still_load(tmp_path):
    ds = to_dataset([{"label": 1}, {"label": 1.5}, {"label": None}], path=tmp_path / "x.jsonl", key="k", description="d")
    assert ds["label"] == [1.0, 1.5, None]


# ------------------------------------------------------------------ classification labels
def _cls_raw(labels: list, dev: list | None = None) -> DatasetDict:
    splits = {"train": _split([{"text": f"t{i}", "label": v} for i, v in enumerate(labels)], "data.train_file: t.jsonl")}
    if dev is not None:
        splits["validation"] = _split([{"text": f"d{i}", "label": v} for i, v in enumerate(dev)], "data.validation_file: d.jsonl")
    return DatasetDict(splits)


@pytest.mark.parametrize(("train", "dev", "expected"), [
    (["pos", None, "neg"], None, r"^data.train_file: t.jsonl row 2 has no label \(null\); give it a label or remove the row.$"),
    (["pos", "neg"], ["pos", "  "], r"^data.validation_file: d.jsonl row 2 has no label \(empty\)"),
    ([["pos", "neg"], ["neg"]], None, r"row 1 has label \['pos', 'neg'\], not a single label"),
], ids=["null", "empty", "list"])
def test_missing_or_multiple_labels_are_refused(train, dev, expected):
    with pytest.raises(UserError, match=expected):
        ClassificationTask().setup(_cls_raw(train, dev))


def test_single_class_warns_and_still_trains(caplog):
    task = ClassificationTask()
    with caplog.at_level(logging.WARNING, logger="llmtune"):
        task.setup(_cls_raw(["pos", "pos", "pos"]))
        maps = task.model_kwargs()
    assert maps["num_labels"] == 1
    assert any("every training example has the label 'pos'" in r.getMessage() for r in caplog.records)


def test_two_classes_do_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="llmtune"):
        ClassificationTask().setup(_cls_raw(["pos", "neg"]))
    assert not caplog.records


def test_row_numbers_are_the_files_after_validation_split(tmp_path):
    # validation_split shuffles both parts: the message must still name the file's row.
    path = tmp_path / "x.jsonl"
    rows = [{"text": f"text {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]
    rows[16]["label"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data_cfg = OmegaConf.load(ROOT_CONF / "data" / "default.yaml")
    data_cfg.train_file, data_cfg.validation_split = str(path), 0.25
    from llmtune.data.load import load_raw

    task = ClassificationTask()
    raw, _ = load_raw(data_cfg, task, seed=0)
    with pytest.raises(UserError, match=r"row 17 has no label \(null\)"):
        task.setup(raw)


# ------------------------------------------------------------------ SFT roles
def _sft_raw(rows: list[dict]) -> DatasetDict:
    return DatasetDict({"train": _split(rows, "data.train_file: c.jsonl")})


def test_sharegpt_from_value_and_roles_are_mapped():
    sharegpt = {"messages": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    usual = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    raw = _sft_raw([sharegpt, usual])  # one column: Arrow gives every turn all four keys
    task = SFTTask()
    task.setup(raw)
    assert task.model_kwargs() == {}
    assert task._messages(raw["train"][0], "w") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
    ]
    assert task._messages(raw["train"][1], "w") == usual["messages"]


def test_sharegpt_role_names_under_the_role_key_are_mapped_too():
    row = {"messages": [{"role": "human", "content": "Hi"}, {"role": "gpt", "content": "Hello."}]}
    assert [t["role"] for t in SFTTask()._messages(row, "w")] == ["user", "assistant"]


def test_unknown_role_is_refused_naming_row_turn_and_the_accepted_roles():
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello."}]}
    with pytest.raises(UserError) as err:
        SFTTask().setup(_sft_raw([good, bad]))
    message = str(err.value)
    assert message.startswith("data.train_file: c.jsonl row 2 turn 2: role 'bot' is not one task=sft trains on")
    assert "use system, user, assistant (ShareGPT's human and gpt are read as user and assistant)" in message


def test_sharegpt_conversations_column_gets_a_rename_hint():
    raw = _sft_raw([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}])
    with pytest.raises(UserError, match=r"found: conversations\. Rename columns with data.columns=\{conversations: messages\}"):
        SFTTask().setup(raw)


# ------------------------------------------------------------------ the model against the data
def _model_cfg(name_or_path=None, config=None, **extra):
    return OmegaConf.create({"name_or_path": name_or_path, "config": config, "tokenizer": None, "trust_remote_code": False,
                             "attn_implementation": None, "pad_vocab_to_multiple_of": None, "reinit_head": False, **extra})


TINY_BERT = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
             "max_position_embeddings": 64, "vocab_size": 50}


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A saved classifier trained on labels neg, pos, as a run's final/ holds it."""
    import transformers

    path = tmp_path_factory.mktemp("final")
    config = transformers.AutoConfig.for_model(**TINY_BERT, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    (path / "llmtune.json").write_text(json.dumps({"task": "classification", "auto_class": "AutoModelForSequenceClassification", "labels": ["neg", "pos"]}))
    return path


def _label_kwargs(labels):
    from llmtune.tasks.common import label_maps

    return label_maps(labels)


@pytest.mark.parametrize(("config", "expected"), [
    ({"model_type": "bert", "max_position_embeddings": 64}, ("max_position_embeddings", 64)),
    ({"model_type": "gpt2", "n_positions": 128}, ("max_position_embeddings", 128)),  # GPT-2 maps the name
    ({"model_type": "t5"}, None),  # relative positions: no limit
])
def test_position_limit_from_the_models_config(config, expected):
    import transformers

    from llmtune.models import position_limit

    assert position_limit(transformers.AutoConfig.for_model(**config)) == expected


def test_max_length_beyond_the_models_positions_is_refused():
    from llmtune.models import check_model

    task = ClassificationTask(max_length=100)
    with pytest.raises(UserError) as err:
        check_model(_model_cfg(config=TINY_BERT), task, {})
    assert str(err.value) == (
        "task.max_length=100: the model embeds at most 64 positions (max_position_embeddings=64 in its config), so longer inputs "
        "would crash training; set task.max_length=64 or less, or raise model.config.max_position_embeddings."
    )
    check_model(_model_cfg(config=TINY_BERT), ClassificationTask(max_length=64), {})  # at the limit: fine


def test_rotary_models_only_warn_past_their_trained_context(tmp_path, caplog):
    # Rotary positions are computed for any position: nothing crashes past max_position_embeddings.
    import transformers

    from llmtune.models import check_model

    llama = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64}
    transformers.AutoConfig.for_model(**llama).save_pretrained(tmp_path)
    task = SFTTask(max_length=128)
    with caplog.at_level(logging.WARNING, logger="llmtune"):
        check_model(_model_cfg(config=llama), task, {})  # fresh weights: no trained context, no warning
        assert not caplog.records
        check_model(_model_cfg(str(tmp_path)), task, {})
    assert "task.max_length=128 is beyond the 64 positions this model was trained on" in caplog.records[0].getMessage()


def test_a_checkpoints_head_on_other_labels_is_refused_with_the_way_out(classifier_dir):
    from llmtune.models import check_model

    task = ClassificationTask(max_length=32)
    check_model(_model_cfg(str(classifier_dir)), task, _label_kwargs(["neg", "pos"]))  # same labels: fine
    for labels in (["negative", "positive"], ["mid", "neg", "pos"]):
        with pytest.raises(UserError, match=r"its classification head was trained on 2 labels \(neg, pos\) but the data has .*model.reinit_head=true"):
            check_model(_model_cfg(str(classifier_dir)), task, _label_kwargs(labels))
    check_model(_model_cfg(str(classifier_dir), reinit_head=True), task, _label_kwargs(["mid", "neg", "pos"]))


def test_a_head_for_another_task_is_not_compared(classifier_dir):
    from llmtune.models import check_model

    # A sequence classifier's final/ fine-tuned for NER gets a new token-classification head anyway.
    check_model(_model_cfg(str(classifier_dir)), NERTask(max_length=32), _label_kwargs(["B-PER", "I-PER", "O"]))


def test_reinit_head_gives_new_head_weights_and_keeps_the_rest(classifier_dir, bert_tok):
    import torch
    import transformers

    from llmtune.models import load_model

    saved = transformers.AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    kwargs = _label_kwargs(["negative", "positive"])  # same size: only reinit_head gives new weights
    kept = load_model(_model_cfg(str(classifier_dir)), ClassificationTask(), bert_tok, kwargs)
    fresh = load_model(_model_cfg(str(classifier_dir), reinit_head=True), ClassificationTask(), bert_tok, kwargs)
    assert torch.equal(kept.classifier.weight, saved.classifier.weight)
    assert not torch.equal(fresh.classifier.weight, saved.classifier.weight)
    assert torch.equal(fresh.bert.encoder.layer[0].output.dense.weight, saved.bert.encoder.layer[0].output.dense.weight)
    wider = load_model(_model_cfg(str(classifier_dir), reinit_head=True), ClassificationTask(), bert_tok, _label_kwargs(["a", "b", "c"]))
    assert wider.classifier.weight.shape[0] == 3
