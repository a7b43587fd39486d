"""The embedded defaults: no data files at all, only llmtune's built-in sample data, offline;
and the tokenized-data cache that makes a second identical run skip tokenization."""

from __future__ import annotations

import json

import pytest

from conftest import FIXED_TOKENIZER, read_log

SMALL = ["trainer.max_steps=2", "trainer.max_epochs=null", "trainer.batch_size=16", "trainer.log_every=1"]


@pytest.mark.parametrize(
    ("command", "task", "limits"),
    [
        ("finetune", "ner", ["data.max_train_samples=64", "data.max_eval_samples=16"]),
        ("finetune", "classification", ["data.max_train_samples=64", "data.max_eval_samples=16"]),
        ("pretrain", "mlm", ["data.max_train_samples=50", "data.max_eval_samples=20"]),
    ],
)
def test_builtin_data_trains(cli, tmp_path, command, task, limits):
    out = tmp_path / "run"
    result = cli(command, f"task={task}", "model=tiny_bert", *SMALL, *limits, f"output_dir={out}")
    assert result.code == 0, result.err[-3000:]
    assert "built-in" in result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task
    assert metrics["main_metric"] in metrics["validation"]
    assert metrics["train"]["steps"] == 2
    assert [r["step"] for r in read_log(out) if r["type"] == "train"] == [1, 2]
    cfg = (out / "config.yaml").read_text()
    assert "train_file: null" in cfg


def _ner_builtin(out, *extra):
    return ("finetune", "task=ner", "model=tiny_bert", *SMALL, "data.max_train_samples=32",
            "data.max_eval_samples=8", f"output_dir={out}", *extra)


def test_second_identical_run_hits_the_tokenization_cache(cli, tmp_path):
    cache = tmp_path / "cache"
    fixed = (f"model.tokenizer={FIXED_TOKENIZER}", f"data.cache_dir={cache}")
    first = cli(*_ner_builtin(tmp_path / "a", *fixed))
    assert first.code == 0, first.err[-3000:]
    assert "cache hit" not in first.err
    assert "cached at" in first.err
    assert list((cache / "tokenized").iterdir())

    second = cli(*_ner_builtin(tmp_path / "b", *fixed))
    assert second.code == 0, second.err[-3000:]
    assert "cache hit" in second.err
    assert "cache hit" in (tmp_path / "b" / "run.log").read_text()
    # Same data either way: the two runs train identically.
    losses = [[r["loss"] for r in read_log(tmp_path / d) if r["type"] == "train"] for d in ("a", "b")]
    assert losses[0] == losses[1]

    # Another setting that changes tokenization misses the cache.
    third = cli(*_ner_builtin(tmp_path / "c", *fixed, "task.max_length=16"))
    assert third.code == 0, third.err[-3000:]
    assert "cache hit" not in third.err


def test_cache_can_be_turned_off(cli, tmp_path):
    cache = tmp_path / "cache"
    fixed = (f"model.tokenizer={FIXED_TOKENIZER}", f"data.cache_dir={cache}", "data.cache=false")
    result = cli(*_ner_builtin(tmp_path / "a", *fixed))
    assert result.code == 0, result.err[-3000:]
    assert not (cache / "tokenized").exists() or not list((cache / "tokenized").iterdir())


def test_cache_hit_with_a_trained_tokenizer(cli, tmp_path):
    """The spelled-out case: the same command twice, tokenizer trained by each run."""
    cache = tmp_path / "cache"
    assert cli(*_ner_builtin(tmp_path / "a", f"data.cache_dir={cache}")).code == 0
    second = cli(*_ner_builtin(tmp_path / "b", f"data.cache_dir={cache}"))
    assert second.code == 0
    assert "cache hit" in second.err
