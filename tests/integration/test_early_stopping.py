"""Early stopping ends a run after `patience` evaluations without a new best main metric."""

from __future__ import annotations

import json

from conftest import FIXED_TOKENIZER, cls_args, read_log


def test_early_stopping_stops_the_run(cli, tmp_path):
    out = tmp_path / "run"
    # A learning rate so small that the accuracy cannot move: every evaluation after the first
    # fails to improve, so patience 1 stops at the second evaluation.
    args = [a for a in cls_args(out, steps=8) if not a.startswith("trainer.eval_every")]
    result = cli(*args, "trainer.eval_every=1", "trainer.early_stopping_patience=1", "optimizer.lr=1e-12",
                 f"model.tokenizer={FIXED_TOKENIZER}")
    assert result.code == 0, result.err[-3000:]
    assert "early stopping" in result.err
    evals = [r for r in read_log(out) if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [1, 2]
    assert evals[0]["accuracy"] == evals[1]["accuracy"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2
    assert metrics["best"]["step"] == 1
    assert (out / "final" / "model.safetensors").is_file()
