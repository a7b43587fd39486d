"""Bad data, labels and length settings through the real CLI: exit code 2 and one error line
(what, where: file and row/sentence, or key; how to fix), no traceback, before training starts.
What can be converted (IOB1/BIOES tags, ShareGPT chats) trains, with a note."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ASSETS, cls_args, ner_args, run_cli

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) ")
ERROR = "llmtune: error: "


def _with(args: list[str], *overrides: str) -> list[str]:
    """`args` with each key=value of `overrides` replacing the same key (or added)."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [a for a in args if a.split("=", 1)[0] not in keys] + list(overrides)


def _error_line(result) -> str:
    """The one error line of a refused run; every other stderr line must be a log line."""
    assert result.code == 2, result.text[-3000:]
    assert "Traceback" not in result.text
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR)]
    assert len(errors) == 1, result.err
    assert all(line.startswith(ERROR) or LOG_LINE.match(line) for line in lines), result.err
    return errors[0].removeprefix(ERROR)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _cls_rows() -> list[dict]:
    return [json.loads(line) for line in (ASSETS / "cls_train.jsonl").read_text().splitlines() if line.strip()]


def _retag(path: Path, target: Path, tag) -> Path:
    """A CoNLL file with every tag rewritten by `tag(previous_tag, tag, next_tag)`."""
    sentences = [[line.split() for line in block.splitlines()] for block in path.read_text().strip().split("\n\n")]
    out = []
    for words in sentences:
        tags = [w[-1] for w in words]
        new = [tag(["O", *tags][i], t, [*tags[1:], "O"][i]) for i, t in enumerate(tags)]
        out.append("\n".join(f"{w[0]} {t}" for w, t in zip(words, new, strict=True)))
    target.write_text("\n\n".join(out) + "\n")
    return target


def _to_iob1(previous: str, tag: str, following: str) -> str:
    return "I" + tag[1:] if tag.startswith("B-") and previous[2:] != tag[2:] else tag


def _to_bioes(previous: str, tag: str, following: str) -> str:
    if tag == "O":
        return tag
    ends = following != "I" + tag[1:]
    return ("S" if ends else "B") + tag[1:] if tag.startswith("B-") else ("E" if ends else "I") + tag[1:]


# ------------------------------------------------------------------ classification labels
def test_labels_mixing_numbers_and_text(tmp_path):
    rows = _cls_rows()
    rows[2]["label"] = 1
    data = _jsonl(tmp_path / "mixed.jsonl", rows)
    line = _error_line(run_cli(*_with(cls_args(tmp_path / "run"), f"data.train_file={data}")))
    assert line == (
        f"data.train_file: {data} row 3 has 'label' 1 (number) but row 1 has '{rows[0]['label']}' (text); "
        "write 'label' the same way in every row (e.g. labels all as text: \"1\", not 1)."
    )


def test_null_label(tmp_path):
    rows = _cls_rows()
    rows[3]["label"] = None
    data = _jsonl(tmp_path / "null.jsonl", rows)
    line = _error_line(run_cli(*_with(cls_args(tmp_path / "run"), f"data.train_file={data}")))
    assert line == f"data.train_file: {data} row 4 has no label (null); give it a label or remove the row."


def test_empty_label_in_a_csv_validation_file(tmp_path):
    data = tmp_path / "dev.csv"
    data.write_text("text,label\nnice film,pos\nbad film,\n")
    line = _error_line(run_cli(*_with(cls_args(tmp_path / "run"), f"data.validation_file={data}")))
    assert line == f"data.validation_file: {data} row 2 has no label (empty); give it a label or remove the row."


def test_single_class_warns_and_trains(tmp_path):
    data = _jsonl(tmp_path / "one.jsonl", [dict(row, label="pos") for row in _cls_rows()])
    result = run_cli(*_with(cls_args(tmp_path / "run", steps=1), f"data.train_file={data}", "data.validation_file=null"))
    assert result.code == 0, result.err[-3000:]
    assert f"data.train_file: {data}: every training example has the label 'pos'" in result.err


# ------------------------------------------------------------------ NER tags
@pytest.mark.parametrize(("tags", "expected"), [
    (["B-PER", "O", "O"], "sentence 2 has 4 tokens but 3 tags; give every token exactly one tag."),
    (["B-PER", "O", "O", "B-LOC", "O"], "sentence 2 has 4 tokens but 5 tags; give every token exactly one tag."),
], ids=["fewer", "more"])
def test_tag_count_differs_from_token_count(tmp_path, tags, expected):
    rows = [{"tokens": ["Tom", "left"], "tags": ["B-PER", "O"]}, {"tokens": ["Anna", "lives", "in", "Oslo"], "tags": tags}]
    data = _jsonl(tmp_path / "ner.jsonl", rows)
    line = _error_line(run_cli(*_with(ner_args(tmp_path / "run"), f"data.train_file={data}")))
    assert line == f"data.train_file: {data} {expected}"


def test_i_without_b_in_iob2_data(tmp_path):
    data = tmp_path / "broken.conll"
    data.write_text("Anna B-PER\nBerg I-PER\nlives O\n\nTom O\nsaw O\nYork I-LOC\n")
    line = _error_line(run_cli(*_with(ner_args(tmp_path / "run"), f"data.train_file={data}")))
    assert line == (
        f"data.train_file: {data} sentence 2 word 3: tag 'I-LOC' continues no entity (the word before is tagged 'O'); "
        "other entities here start with B-, as IOB2 requires. Start the entity with B-LOC or fix the tag before it "
        "(sentences with such a tag: 1)."
    )


def test_tags_without_a_scheme(tmp_path):
    data = tmp_path / "io.conll"
    data.write_text("Anna PER\nlives O\n")
    line = _error_line(run_cli(*_with(ner_args(tmp_path / "run"), f"data.train_file={data}")))
    assert line.startswith(f"data.train_file: {data} sentence 1 word 1: tag 'PER' is not an IOB tag; task=ner needs O and PREFIX-TYPE tags")


@pytest.mark.parametrize(("convert", "scheme"), [(_to_iob1, "IOB1"), (_to_bioes, "BIOES")], ids=["iob1", "bioes"])
def test_iob1_and_bioes_files_are_converted_and_train(tmp_path, convert, scheme):
    train = _retag(ASSETS / "ner_train.conll", tmp_path / "train.conll", convert)
    dev = _retag(ASSETS / "ner_dev.conll", tmp_path / "dev.conll", convert)
    assert train.read_text() != (ASSETS / "ner_train.conll").read_text()
    out = tmp_path / "run"
    result = run_cli(*_with(ner_args(out, steps=1), f"data.train_file={train}", f"data.validation_file={dev}"))
    assert result.code == 0, result.err[-3000:]
    assert f"data.train_file: {train}: the tags are {scheme}; converted to IOB2" in result.err
    assert f"data.validation_file: {dev}: the tags are {scheme}; converted to IOB2" in result.err
    labels = json.loads((out / "final" / "llmtune.json").read_text())["labels"]
    assert labels == ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]


# ------------------------------------------------------------------ SFT chats
def _sft_args(out: Path, data: Path) -> list[str]:
    return ["finetune", "task=sft", "model=tiny_llama", "task.max_length=64", f"data.train_file={data}", "data.validation_split=0.25",
            "trainer.max_steps=1", "trainer.max_epochs=null", "trainer.batch_size=2", "trainer.eval_every=null", f"output_dir={out}"]


def test_unknown_chat_role(tmp_path):
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello."}]}
    data = _jsonl(tmp_path / "chats.jsonl", [chat, chat, bad, chat])
    line = _error_line(run_cli(*_sft_args(tmp_path / "run", data)))
    assert re.fullmatch(
        re.escape(f"data.train_file: {data}") + r"( \(validation_split 0\.25\))? row 3 turn 2: role 'bot' is not one task=sft trains on; "
        + re.escape("use system, user, assistant (ShareGPT's human and gpt are read as user and assistant). Fix the role or remove the turn."),
        line,
    )


def test_sharegpt_chats_train(tmp_path):
    chat = {"messages": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Capital of Peru?"}, {"from": "gpt", "value": "Lima."}]}
    data = _jsonl(tmp_path / "sharegpt.jsonl", [chat] * 8)
    result = run_cli(*_sft_args(tmp_path / "run", data))
    assert result.code == 0, result.err[-3000:]


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(("override", "expected"), [
    ("data.validation_split=1.5", "data.validation_split=1.5: must be a fraction strictly between 0 and 1 (e.g. 0.1), or null for no held-out split."),
    ("data.validation_split=0", "data.validation_split=0: must be a fraction strictly between 0 and 1 (e.g. 0.1), or null for no held-out split."),
    ("task.max_length=0", "task.max_length=0: must be a positive number of tokens, e.g. task.max_length=128."),
    ("task.max_length=-8", "task.max_length=-8: must be a positive number of tokens, e.g. task.max_length=128."),
    ("task.max_length=512", "task.max_length=512: the model embeds at most 256 positions (max_position_embeddings=256 in its config), "
                            "so longer inputs would crash training; set task.max_length=256 or less, or raise model.config.max_position_embeddings."),
])
def test_bad_settings(tmp_path, override, expected):
    assert _error_line(run_cli(*ner_args(tmp_path / "run"), override)) == expected


# ------------------------------------------------------------------ a final/ on other labels
@pytest.fixture(scope="module")
def classifier_final(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "run"
    result = run_cli(*cls_args(out, steps=1))
    assert result.code == 0, result.err[-3000:]
    return out / "final"


def test_finetuning_a_final_on_other_labels_needs_reinit_head(tmp_path, classifier_final):
    rows = [dict(row, label=["neg", "pos", "mid"][i % 3]) for i, row in enumerate(_cls_rows())]
    data = _jsonl(tmp_path / "three.jsonl", rows)
    args = _with(cls_args(tmp_path / "run", steps=1), f"data.train_file={data}", "data.validation_file=null",
                 f"model.name_or_path={classifier_final}", "model.config=null")
    line = _error_line(run_cli(*args))
    assert line == (
        f"model.name_or_path={classifier_final}: its classification head was trained on 2 labels (neg, pos) but the data has 3 "
        "(mid, neg, pos); add model.reinit_head=true to start a new head for these labels (the rest of the model is kept), "
        "or make the data's labels match."
    )
    result = run_cli(*_with(args, f"output_dir={tmp_path / 'run2'}"), "model.reinit_head=true")
    assert result.code == 0, result.err[-3000:]
    assert json.loads((tmp_path / "run2" / "final" / "llmtune.json").read_text())["labels"] == ["mid", "neg", "pos"]
