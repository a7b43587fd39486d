"""Encoder tasks on a Llama-style decoder (model=tiny_llama): classification, NER and relation
train, evaluate and predict through the CLI, fully and with LoRA (the head trains in full)."""

from __future__ import annotations

import json

import pytest

from conftest import ASSETS, cls_args, ner_args, run_cli

CASES = [("classification", "none"), ("classification", "lora"), ("ner", "none"), ("ner", "lora"), ("relation", "lora")]
INPUTS = {
    "classification": ["I loved this film.", "The plot was dull and far too long."],
    "ner": ["Anna Berg lives in Oslo .", {"tokens": ["Tom", "works", "for", "Greenleaf", "Bank"]}],
    "relation": [{"tokens": "Anna Berg works for Bluepeak Bank .".split(), "head": {"start": 0, "end": 2, "type": "PER"},
                  "tail": {"start": 4, "end": 6, "type": "ORG"}}],
}


def _train_args(task: str, out) -> list[str]:
    if task == "ner":
        return ner_args(out)
    if task == "classification":
        return cls_args(out)
    return ["finetune", "task=relation", f"data.train_file={ASSETS / 'relation_train.jsonl'}", f"data.validation_file={ASSETS / 'relation_dev.jsonl'}",
            "trainer.max_steps=4", "trainer.max_epochs=null", "trainer.batch_size=4", f"output_dir={out}"]


@pytest.mark.slow
@pytest.mark.parametrize("task, peft", CASES, ids=[f"{t}-{p}" for t, p in CASES])
def test_a_decoder_backbone_trains_evaluates_and_predicts(tmp_path, task, peft):
    run = tmp_path / "run"
    result = run_cli(*_train_args(task, run), "model=tiny_llama", f"peft={peft}", "callbacks=quiet")
    assert result.code == 0, result.err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["main_metric"] in metrics["validation"]
    config = json.loads((run / "final" / "config.json").read_text())
    tokenizer = json.loads((run / "final" / "tokenizer.json").read_text())
    pad = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == "<pad>")
    assert config["pad_token_id"] == pad
    # Word-split inputs (NER, relation) get a space before each word, as in running text.
    assert ('"add_prefix_space": true' in json.dumps(tokenizer["pre_tokenizer"]).lower()) == (task != "classification")

    scored = run_cli("evaluate", run / "final", "split=validation")
    assert scored.code == 0, scored.err[-2000:]
    assert json.loads((run / "final" / "llmtune.json").read_text())["main_metric"] in scored.out

    inputs, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inputs.write_text("".join(json.dumps(item) + "\n" for item in INPUTS[task]))
    predicted = run_cli("predict", run / "final", f"input={inputs}", f"output={out}")
    assert predicted.code == 0, predicted.err[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(INPUTS[task])
    assert all(("entities" in row) if task == "ner" else ("label" in row) for row in rows)
