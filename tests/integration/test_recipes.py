"""`llmtune recipes` lists the shipped recipes and `llmtune run NAME` runs each of them."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import ASSETS
from llmtune.paths import recipe_names
from llmtune.recipes import describe


def test_recipes_lists_every_recipe(cli):
    result = cli("recipes")
    assert result.code == 0, result.err
    assert recipe_names()
    for name in recipe_names():
        assert name in result.out
    assert "llmtune run NAME" in result.out


def _data_for(task: str) -> list[str]:
    if task == "ner":
        return [f"data.train_file={ASSETS / 'ner_train.conll'}", f"data.validation_file={ASSETS / 'ner_dev.conll'}"]
    if task == "classification":
        return [f"data.train_file={ASSETS / 'cls_train.jsonl'}", f"data.validation_file={ASSETS / 'cls_dev.jsonl'}"]
    if task == "sft":  # the built-in instruction data, cut down
        return ["data.max_train_samples=64", "data.max_eval_samples=16", "task.max_length=128"]
    if task == "relation":
        return [f"data.train_file={ASSETS / 'relation_train.jsonl'}", f"data.validation_file={ASSETS / 'relation_dev.jsonl'}"]
    if task == "qa":  # the built-in QA data, cut down
        return ["data.max_train_samples=16", "data.max_eval_samples=8", "task.max_length=64", "task.doc_stride=16"]
    if task in ("summarization", "translation"):  # the built-in pairs, cut down; short generations
        return ["data.max_train_samples=16", "data.max_eval_samples=4", "task.max_target_length=8"]
    return [f"data.train_file={ASSETS / 'corpus.txt'}", "task.max_length=32"]


# Continual recipes run a sequence of stages and write a forgetting report instead of one run's
# outputs: tests/integration/test_continual.py runs them (slow).
@pytest.mark.parametrize("name", [n for n in recipe_names() if not n.startswith("continual-")])
def test_each_recipe_runs_with_a_tiny_model(cli, tmp_path, name):
    _, command = describe(name)
    task = next((part.split("=", 1)[1] for part in command.split() if part.startswith("task=")), None)
    task = task or ("mlm" if " pretrain" in command else "classification")
    model = "tiny_llama" if task in ("clm", "sft") else "tiny_bert"
    if task in ("summarization", "translation"):  # the recipe's kind of model, tiny: encoder-decoder or decoder-only
        model = "tiny_t5" if "model=minilm2minilm" in command else "tiny_llama"
    out = tmp_path / "run"
    result = cli(
        "run", name, f"model={model}", *_data_for(task),
        "trainer.max_steps=2", "trainer.max_epochs=null", "trainer.batch_size=4", "trainer.eval_every=null",
        f"output_dir={out}",
    )
    assert result.code == 0, result.err[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task
    assert metrics["train"]["steps"] == 2
    assert metrics["main_metric"] in metrics["validation"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["task"]["name"] == task
    info = json.loads((out / "final" / "llmtune.json").read_text())
    # The recipe's own choices survive the overrides (e.g. ner-lora trains an adapter).
    peft = next((part.split("=", 1)[1] for part in command.split() if part.startswith("peft=")), "none")
    assert info["peft"] == peft
