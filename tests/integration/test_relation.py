"""task=relation through the CLI: train on a user's JSONL and on the built-in data, with each
PEFT method; evaluate, predict and export the result; a real model beats the baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ASSETS, run_cli

TRAIN, DEV = ASSETS / "relation_train.jsonl", ASSETS / "relation_dev.jsonl"
INPUTS = [
    {"tokens": "Anna Berg works for Bluepeak Bank .".split(), "head": {"start": 0, "end": 2, "type": "PER"}, "tail": {"start": 4, "end": 6, "type": "ORG"}},
    {"tokens": "Bluepeak Bank hired Anna Berg .".split(), "head": {"start": 3, "end": 5, "type": "PER"}, "tail": {"start": 0, "end": 2, "type": "ORG"}},
    {"tokens": "Oslo Anna".split(), "head": {"start": 1, "end": 2, "type": "PER"}, "tail": {"start": 0, "end": 1, "type": "LOC"}},
]


def _args(out: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["finetune", "task=relation", "model=tiny_bert", "task.max_length=48", f"trainer.max_steps={steps}", "trainer.max_epochs=null",
            "trainer.batch_size=8", "trainer.eval_every=null", "callbacks=quiet", f"output_dir={out}", *extra]


def _predict(path: Path, inputs: Path, tmp_path: Path, name: str) -> list[dict]:
    out = tmp_path / f"{name}.jsonl"
    result = run_cli("predict", path, f"input={inputs}", f"output={out}", "top_k=2")
    assert result.code == 0, result.err[-2000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_lora_on_a_jsonl_file_trains_evaluates_and_predicts(tmp_path):
    run = tmp_path / "run"
    result = run_cli(*_args(run, f"data.train_file={TRAIN}", f"data.validation_file={DEV}", "peft=lora", steps=2))
    assert result.code == 0, result.err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["main_metric"] == "micro_f1"
    assert {"micro_f1", "micro_f1_stderr", "macro_f1", "accuracy", "loss"} <= set(metrics["validation"])
    final = run / "final"
    info = json.loads((final / "llmtune.json").read_text())
    assert info["entity_types"] == ["LOC", "ORG", "PER"] and "no_relation" in info["labels"]
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert len(adapter["trainable_token_indices"]) == 12  # 3 types x head/tail x start/end markers
    assert "[E1:PER]" in (final / "tokenizer.json").read_text()

    scored = run_cli("evaluate", final, f"data.validation_file={DEV}", "split=validation")
    assert scored.code == 0, scored.err[-2000:]
    assert "micro_f1" in scored.out

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(row) + "\n" for row in INPUTS))
    predicted = _predict(final, inputs, tmp_path, "final")
    assert len(predicted) == len(INPUTS)
    labels = set(info["labels"])
    for row in predicted:
        assert row["label"] in labels and 0 < row["score"] <= 1
        assert list(row["probabilities"])[0] == row["label"] and len(row["probabilities"]) == 2

    # export (same predictions), bitfit, full fine-tuning and the built-in data: the slow tests below


def test_a_bad_span_is_refused_before_training(tmp_path):
    rows = [json.loads(line) for line in TRAIN.read_text().splitlines()]
    rows[3]["tail"] = {"start": rows[3]["head"]["start"], "end": rows[3]["head"]["end"] + 1, "type": "LOC"}
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_cli(*_args(tmp_path / "run", f"data.train_file={train}"))
    assert result.code == 2
    assert f"{train} row 4" in result.err and "overlap" in result.err
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.slow
@pytest.mark.parametrize("peft", ["none", "bitfit", "lora"])
def test_builtin_data_with_each_peft_method(tmp_path, peft):
    run = tmp_path / "run"
    result = run_cli(*_args(run, f"peft={peft}", "data.max_train_samples=64", "data.max_eval_samples=32"))
    assert result.code == 0, result.err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"validation", "test"}
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(row) + "\n" for row in INPUTS))
    assert len(_predict(run / "final", inputs, tmp_path, "p")) == len(INPUTS)
    exported = tmp_path / "export"
    assert run_cli("export", run / "final", f"output={exported}").code == 0
    assert not (exported / "adapter_config.json").exists()  # a LoRA adapter is merged
    assert _predict(exported, inputs, tmp_path, "e") == _predict(run / "final", inputs, tmp_path, "f")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**INPUTS[0], "tail": {"start": 4, "end": 6, "type": "DATE"}}) + "\n")
    refused = run_cli("predict", exported, f"input={bad}")
    assert refused.code == 2 and "tail type 'DATE' is not an entity type" in refused.err
    assert len(refused.err.strip().splitlines()) == 1


@pytest.mark.slow
def test_minilm_beats_the_majority_and_entity_type_baselines(tmp_path):
    """The shipped recipe, shortened: MiniLM with LoRA learns what the words between the
    entities say. Majority class scores micro-F1 0 and entity types alone about 0.4 (see
    tests/unit/test_relation_task.py); the model must clearly beat both."""
    run = tmp_path / "run"
    result = run_cli("run", "relation-lora", "trainer.max_epochs=null", "trainer.max_steps=80", "data.max_eval_samples=200",
                     "trainer.eval_every=null", "callbacks=quiet", f"output_dir={run}")
    assert result.code == 0, result.err[-3000:]
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["micro_f1"] > 0.7, test
