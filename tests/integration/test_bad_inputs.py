"""Bad input, table-driven, through the real CLI entry: each row must end with exit code 2, ONE
error line (no traceback), and leave a finished run directory exactly as it was.

Every row points `output_dir` at a copy of a finished tiny run and asks to replace it
(`trainer.overwrite_output_dir=true`) — the most dangerous way to meet a bad input: a check that
ran only after the old run was cleared would lose it. Rows about resuming use `trainer.resume=auto`
instead. Files a row needs are written next to the run; `{tmp}` in an argument names that folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ASSETS, FIXED_TOKENIZER, cls_args, ner_args, run_cli

# ------------------------------------------------------------------ bases (no output_dir)
NER = [a for a in ner_args(Path("unused"), steps=2) if not a.startswith("output_dir=")] + [f"model.tokenizer={FIXED_TOKENIZER}"]
CLS = [a for a in cls_args(Path("unused"), steps=2) if not a.startswith("output_dir=")] + [f"model.tokenizer={FIXED_TOKENIZER}"]
SFT = ["finetune", "task=sft", "model=tiny_llama", "task.max_length=64", "trainer.max_steps=1", "trainer.max_epochs=null",
       "trainer.batch_size=2", "trainer.eval_every=null", "data.validation_split=null"]


def _without(base: list[str], *prefixes: str) -> list[str]:
    return [a for a in base if not a.startswith(prefixes)]


CLS_TRAIN_ONLY = _without(CLS, "data.train_file=", "data.validation_file=")
NER_TRAIN_ONLY = _without(NER, "data.train_file=", "data.validation_file=")
NER_NO_TRAIN = _without(NER, "data.train_file=")   # keeps the good validation file
GOOD_CLS = "\n".join(json.dumps({"text": f"text number {i}", "label": "pos" if i % 2 else "neg"}) for i in range(12))


@dataclass
class Row:
    id: str
    args: list[str]
    expect: str                                   # a piece of the one error line (case-insensitive)
    files: dict[str, str] = field(default_factory=dict)
    resume: bool = False                          # trainer.resume=auto instead of overwrite_output_dir
    command: str | None = None                    # a CLI verb other than the base's (no run directory)


ROWS = [
    # ---------------------------------------------------------------- keys, options and types
    Row("key-typo", [*NER, "trainer.max_step=5"], "trainer.max_steps"),
    Row("unknown-group-option", [*NER, "peft=lroa"], "lora"),
    Row("unknown-task", [*_without(NER, "task="), "task=nerr"], "ner"),
    Row("optimizer-typo", [*NER, "optimizer=adamw8bits"], "adamw8bit"),
    Row("distributed-typo", [*NER, "distributed=fdsp"], "fsdp"),
    Row("scheduler-typo", [*NER, "scheduler=cosin"], "cosine"),
    Row("precision-unknown", [*NER, "trainer.precision=fp32"], "trainer.precision"),
    Row("fp16-on-cpu", [*NER, "trainer.precision=fp16"], "fp16"),
    Row("max-steps-zero", [*NER, "trainer.max_steps=0"], "trainer.max_steps"),
    Row("batch-size-zero", [*NER, "trainer.batch_size=0"], "trainer.batch_size"),
    Row("grad-accum-zero", [*NER, "trainer.grad_accum=0"], "trainer.grad_accum"),
    Row("log-every-zero", [*NER, "trainer.log_every=0"], "trainer.log_every"),
    Row("lr-negative", [*NER, "optimizer.lr=-1"], "optimizer.lr"),
    Row("lr-not-a-number", [*NER, "optimizer.lr=fast"], "optimizer.lr"),
    Row("bool-not-a-bool", [*SFT, "task.packing=yes"], "task.packing"),
    Row("vocab-multiple-zero", [*NER, "model.pad_vocab_to_multiple_of=0"], "pad_vocab_to_multiple_of"),
    Row("max-length-zero", [*NER, "task.max_length=0"], "task.max_length"),
    Row("max-length-negative", [*NER, "task.max_length=-4"], "task.max_length"),
    Row("max-length-over-positions", [*NER, "task.max_length=100000"], "task.max_length"),
    Row("validation-split-above-one", [*NER_TRAIN_ONLY, f"data.train_file={ASSETS / 'ner_train.conll'}", "data.validation_split=1.5"], "data.validation_split"),
    Row("too-few-rows-to-hold-out", [*NER_TRAIN_ONLY, "data.train_file={tmp}/one.conll"], "data.validation_split",
        {"one.conll": "Anna B-PER\nlives O\n"}),
    Row("validation-split-zero", [*NER_TRAIN_ONLY, f"data.train_file={ASSETS / 'ner_train.conll'}", "data.validation_split=0"], "data.validation_split"),
    Row("target-modules-unknown", [*NER, "peft=lora", "peft.target_modules=[nope_proj]"], "nope_proj"),
    Row("target-modules-regex-matches-nothing", [*NER, "peft=lora", "peft.target_modules=.*nothing_here"], "target_modules"),
    Row("deepspeed-without-gpu", [*NER, "distributed=deepspeed_zero2"], "deepspeed"),
    Row("max-tokens-too-small", [*NER, "trainer.max_tokens=4"], "trainer.max_tokens"),
    # ---------------------------------------------------------------- paths
    Row("train-file-missing", [*NER_TRAIN_ONLY, "data.train_file={tmp}/missing.conll"], "no such file"),
    Row("train-file-is-a-dir", [*NER_TRAIN_ONLY, "data.train_file={tmp}"], "directory"),
    Row("train-file-unknown-extension", [*NER_TRAIN_ONLY, "data.train_file={tmp}/train.xyz"], ".xyz", {"train.xyz": "a b c\n"}),
    Row("model-folder-missing", [*NER, "model.name_or_path=./no/such/model"], "model.name_or_path"),
    Row("resume-path-missing", [*NER, "trainer.resume=/no/such/checkpoint"], "trainer.resume"),
    Row("output-dir-is-a-file", [*NER], "output_dir", {"a_file": "x"}, command="output-file"),
    # ---------------------------------------------------------------- file contents
    Row("jsonl-bad-line", [*CLS_TRAIN_ONLY, "data.train_file={tmp}/train.jsonl"], "line 3",
        {"train.jsonl": '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", "label": \n'}),
    Row("csv-wrong-field-count", [*CLS_TRAIN_ONLY, "data.train_file={tmp}/train.csv"], "line 3",
        {"train.csv": "text,label\nfine,pos\ntoo,many,fields\n"}),
    Row("empty-train-file", [*CLS_TRAIN_ONLY, "data.train_file={tmp}/train.jsonl"], "train.jsonl", {"train.jsonl": ""}),
    Row("missing-column", [*CLS_TRAIN_ONLY, "data.train_file={tmp}/train.jsonl"], "label",
        {"train.jsonl": "\n".join(json.dumps({"text": f"t{i}", "stars": 1}) for i in range(12))}),
    Row("labels-mix-int-and-str", [*CLS_TRAIN_ONLY, "data.train_file={tmp}/train.jsonl"], "label",
        {"train.jsonl": GOOD_CLS + "\n" + json.dumps({"text": "odd one", "label": 3}) + "\n"}),
    Row("labels-null", [*CLS_TRAIN_ONLY, "data.train_file={tmp}/train.jsonl"], "label",
        {"train.jsonl": GOOD_CLS + "\n" + json.dumps({"text": "no label here", "label": None}) + "\n"}),
    Row("ner-fewer-tags-than-tokens", [*NER_NO_TRAIN, "data.train_file={tmp}/train.jsonl"], "tags",
        {"train.jsonl": json.dumps({"tokens": ["Anna", "lives", "here"], "tags": ["B-PER", "O"]}) + "\n"}),
    Row("ner-more-tags-than-tokens", [*NER_NO_TRAIN, "data.train_file={tmp}/train.jsonl"], "tags",
        {"train.jsonl": json.dumps({"tokens": ["Anna", "lives"], "tags": ["B-PER", "O", "O"]}) + "\n"}),
    Row("ner-unknown-scheme", [*NER_NO_TRAIN, "data.train_file={tmp}/train.conll"], "train.conll",
        {"train.conll": "Anna X-PER\nlives O\n\nTom Q-PER\nworks O\n"}),
    Row("sft-unknown-role", [*SFT, "data.train_file={tmp}/chat.jsonl"], "role",
        {"chat.jsonl": json.dumps({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n"}),
    Row("model-folder-without-tokenizer", [*_without(NER, "model=", "model.tokenizer="), "model=minilm", "model.name_or_path={tmp}/bare"], "tokenizer",
        command="bare-model"),
    Row("resume-with-another-peft", [*NER, "peft=lora"], "peft", resume=True),
    Row("recipe-typo", ["run", "ner-lroa"], "ner-lora", command="no-run-dir"),
]


# ------------------------------------------------------------------ the finished run every row starts from
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    result = run_cli(*NER, f"output_dir={run}")
    assert result.code == 0, result.text
    assert (run / "final").is_dir() and (run / "metrics.json").is_file()
    return run


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256), and every folder (-> 'dir')."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        out[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _prepare(row: Row, tmp: Path, finished: Path) -> tuple[list[str], Path]:
    for name, text in row.files.items():
        (tmp / name).write_text(text)
    run = tmp / "run"
    shutil.copytree(finished, run)
    if row.command == "bare-model":   # config and weights without any tokenizer file
        bare = tmp / "bare"
        bare.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(finished / "final" / name, bare / name)
    args = [a.replace("{tmp}", str(tmp)) for a in row.args]
    if row.command == "no-run-dir":
        return args, run
    if row.command == "output-file":
        return [*args, f"output_dir={tmp / 'a_file'}"], run
    tail = ["trainer.resume=auto"] if row.resume else ["trainer.overwrite_output_dir=true"]
    return [*args, f"output_dir={run}", *tail], run


def test_table_has_at_least_forty_rows():
    assert len(ROWS) >= 40
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(row: Row, finished: Path, tmp_path: Path):
    args, run = _prepare(row, tmp_path, finished)
    before = _snapshot(run)
    files_before = _snapshot(tmp_path)
    result = run_cli(*args)

    assert result.code == 2, f"exit {result.code}\n{result.text[-3000:]}"
    assert "Traceback" not in result.text
    errors = [line for line in result.err.splitlines() if line.startswith("llmtune: error")]
    assert len(errors) == 1, result.err[-3000:]
    assert result.err.rstrip().endswith(errors[0]), "the error line is the last thing printed"
    assert row.expect.lower() in errors[0].lower(), errors[0]
    assert _snapshot(run) == before, "the finished run directory changed"
    assert _snapshot(tmp_path) == files_before, "a refused run left files behind"
