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
    return [f"data.train_file={ASSETS / 'corpus.txt'}", "task.max_length=32"]


@pytest.mark.parametrize("name", recipe_names())
def test_each_recipe_runs_with_a_tiny_model(cli, tmp_path, name):
    _, command = describe(name)
    task = next((part.split("=", 1)[1] for part in command.split() if part.startswith("task=")), None)
    task = task or ("mlm" if " pretrain" in command else "classification")
    model = "tiny_llama" if task in ("clm", "sft") else "tiny_bert"
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
