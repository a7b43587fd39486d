"""task=sft through the real CLI: packed SFT trains (its held-out loss falls), LoRA works, and
one optimizer step over the same samples gives the same loss and weights packed or not."""

from __future__ import annotations

import json
import math
import re

import pytest

from conftest import SFT_SAMPLES, read_log, run_cli

SAMPLES = SFT_SAMPLES
CHATS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "What is 1 plus 1?"}, {"role": "assistant", "content": "1 plus 1 is 2."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"},
                  {"role": "assistant", "content": "Lima."}]},
] * 4


def _tiny(out, *extra):
    return [
        "finetune", "task=sft", "model=tiny_llama", "task.max_length=128",
        "data.max_train_samples=300", "data.max_eval_samples=60",
        "trainer.max_epochs=null", "trainer.batch_size=4", "trainer.log_every=5", f"output_dir={out}", *extra,
    ]


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    result = run_cli(*_tiny(out, "task.packing=true", "trainer.max_steps=25", "trainer.eval_every=25", "trainer.eval_at_start=true", "optimizer.lr=5e-3"))
    assert result.code == 0, result.err[-3000:]
    return out, result


def test_packed_sft_loss_falls(packed_run):
    out, result = packed_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "sft" and metrics["main_metric"] == "loss" and metrics["greater_is_better"] is False
    before, after = metrics["initial_validation"]["loss"], metrics["validation"]["loss"]
    assert after < 0.85 * before, (before, after)
    assert metrics["validation"]["perplexity"] == pytest.approx(math.exp(after), rel=1e-6)
    train = [r for r in read_log(out) if r["type"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert "packed" in (out / "run.log").read_text()


def test_each_evaluation_generates_replies_to_a_few_held_out_chats(packed_run):
    # task.eval_generate (default 4): replies for the first chats of the split, in the log and
    # predictions/ (the engine's seam: EvalContext.report_predictions); the loss stays the metric.
    out, _ = packed_run
    rows = [json.loads(line) for line in (out / "predictions" / "validation.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(set(r) == {"source", "reference", "prediction"} for r in rows)
    assert all(r["source"].startswith("user: ") and r["reference"] for r in rows)
    assert "validation sample 1: source: user: " in (out / "run.log").read_text()


def test_packed_rows_are_the_batch_plan_units(packed_run):
    out, _ = packed_run
    log = (out / "run.log").read_text()
    # ~300 samples pack into far fewer rows of up to 128 tokens; the plan counts rows.
    samples, rows = map(int, re.search(r"train: packed (\d+) samples into (\d+) rows", log).groups())
    assert samples > 280 and rows < samples / 2
    assert f"data: train {rows}," in log


def test_lora_sft_trains_and_saves_an_adapter(tmp_path):
    out = tmp_path / "run"
    result = run_cli(*_tiny(out, "task.packing=true", "peft=lora", "trainer.max_steps=3", "trainer.eval_every=null"))
    assert result.code == 0, result.err[-3000:]
    assert (out / "final" / "adapter_config.json").is_file()
    assert json.loads((out / "final" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"


def test_messages_rows_train(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    out = tmp_path / "run"
    result = run_cli(*_tiny(out, "task.packing=true", f"data.train_file={data}", "data.validation_split=0.25", "trainer.max_steps=2", "trainer.batch_size=1"))
    assert result.code == 0, result.err[-3000:]
    assert json.loads((out / "metrics.json").read_text())["validation"]["loss"] > 0


def _one_step(tmp_path, packing: bool, batch_size: int):
    """One SGD step over every training sample (one packed row, or one sample per row)."""
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SAMPLES * 2))
    out = tmp_path / f"run-{packing}"
    result = run_cli(
        "finetune", "task=sft", "model=tiny_llama", "task.max_length=512", f"task.packing={str(packing).lower()}",
        f"data.train_file={data}", f"data.validation_file={data}", "optimizer=sgd", "optimizer.lr=0.5",
        "trainer.max_steps=1", "trainer.max_epochs=null", f"trainer.batch_size={batch_size}", f"trainer.eval_batch_size={batch_size}",
        "trainer.eval_at_start=true", "trainer.log_every=1", f"output_dir={out}",
    )
    assert result.code == 0, result.err[-3000:]
    state = json.loads((out / "checkpoints" / "step-1" / "state.json").read_text())
    return read_log(out), json.loads((out / "metrics.json").read_text()), state


def test_one_step_packed_equals_one_step_unpacked(tmp_path):
    packed_log, packed, packed_state = _one_step(tmp_path, True, 1)      # all 12 samples fit one 512-token row
    plain_log, plain, plain_state = _one_step(tmp_path, False, len(SAMPLES) * 2)
    train = lambda log: next(r for r in log if r["type"] == "train")  # noqa: E731
    assert train(packed_log)["loss"] == pytest.approx(train(plain_log)["loss"], rel=1e-5)
    assert packed["initial_validation"]["loss"] == pytest.approx(plain["initial_validation"]["loss"], rel=1e-5)
    assert packed["validation"]["loss"] == pytest.approx(plain["validation"]["loss"], rel=1e-5)  # same update
    assert packed["validation"]["loss"] < packed["initial_validation"]["loss"]
    # Tokens counted by the engine are the real ones: no padding in either count.
    assert packed_state["tokens_seen"] == plain_state["tokens_seen"]


def test_an_encoder_model_is_refused(tmp_path):
    # finetune's default model is MiniLM (BERT, no EOS token): not a decoder.
    result = run_cli("finetune", "task=sft", "data.max_train_samples=20", "trainer.max_steps=1", f"output_dir={tmp_path / 'run'}")
    assert result.code == 2
    assert "task=sft needs a decoder" in result.err
