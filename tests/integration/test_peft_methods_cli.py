"""Each PEFT method through the real CLI on tiny models: finetune, then evaluate, predict and
export from what it saved. The log names the trainable share, checkpoints hold only what
trains, `evaluate` reproduces the run's validation metrics, and the exported (merged) model
predicts what final/ predicts. Resume is exact for every method, including those with their own
state (PiSSA's residual base, LoRA+'s parameter groups, VeRA's shared random projections, DoRA's
magnitudes, BitFit's whole-model final/).

One method (PiSSA: it changes the base weights, the hardest case for loading and export) and
the QLoRA refusal run in the fast suite; every method x task and the resumes are slow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXED_TOKENIZER, NO_DROPOUT, SFT_SAMPLES, cls_args, ner_args, read_log, run_cli

METHODS = ["dora", "rslora", "pissa", "lora_plus", "vera", "ia3", "ln_tuning"]
INPUTS = {
    "ner": ["Anna Berg lives in Oslo.", "Tom works for Greenleaf Bank in Leeds.", "Sara"],
    "classification": ["The actors were wonderful.", "A tired script with no real surprises.", "Fun!"],
    "sft": [s["prompt"] for s in SFT_SAMPLES[:3]],
}


def sft_args(out: Path, data: Path, steps: int = 2) -> list[str]:
    return [
        "finetune", "task=sft", "model=tiny_llama", "task.max_length=128", f"data.train_file={data}", "data.validation_split=0.25",
        f"trainer.max_steps={steps}", "trainer.max_epochs=null", "trainer.batch_size=2", "trainer.eval_every=null", f"output_dir={out}",
    ]


def task_args(task: str, out: Path, tmp: Path) -> list[str]:
    if task == "sft":
        data = tmp / "sft.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in SFT_SAMPLES * 2))
        return sft_args(out, data)
    return (ner_args if task == "ner" else cls_args)(out, steps=2)


def close(a, b) -> bool:
    """Equal, floats to 1e-5 (a merged model sums in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-5
    return a == b


def predict(path: Path, source: Path, *extra: str) -> list[dict]:
    out = source.with_name(f"{source.stem}-{path.name}.out.jsonl")
    result = run_cli("predict", path, f"input={source}", f"output={out}", *extra)
    assert result.code == 0, result.err[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def check_method(method: str, task: str, tmp: Path) -> None:
    run = tmp / "run"
    result = run_cli(*task_args(task, run, tmp), f"peft={method}", "trainer.save_every=2")
    assert result.code == 0, result.err[-3000:]
    found = re.search(rf"parameters: ([\d,]+) trainable of ([\d,]+) total \([\d.]+%, peft={method}\)", result.err)
    assert found, result.err[-2000:]
    trainable, total = (int(g.replace(",", "")) for g in found.groups())
    assert 0 < trainable < total / 2
    # The checkpoint holds what trains, nothing else.
    saved = load_file(run / "checkpoints" / "step-2" / "trainable.safetensors")
    assert sum(t.numel() for t in saved.values()) == trainable
    info = json.loads((run / "final" / "llmtune.json").read_text())
    assert info["peft"] == method and (run / "final" / "adapter_config.json").is_file()

    metrics = json.loads((run / "metrics.json").read_text())
    evaluated = tmp / "eval.json"
    result = run_cli("evaluate", run / "final", "split=validation", f"output={evaluated}")
    assert result.code == 0, result.err[-3000:]
    got = json.loads(evaluated.read_text())["validation"]
    for name, value in metrics["validation"].items():
        if isinstance(value, float):
            assert got[name] == pytest.approx(value, abs=1e-4), name

    export = tmp / "export"
    result = run_cli("export", run / "final", f"output={export}")
    assert result.code == 0, result.err[-3000:]
    assert "merged into its base" in result.out and not (export / "adapter_config.json").exists()
    source = tmp / "in.jsonl"
    source.write_text("".join(json.dumps(t) + "\n" for t in INPUTS[task]))
    extra = ["max_new_tokens=4"] if task == "sft" else []
    ours, theirs = predict(run / "final", source, *extra), predict(export, source, *extra)
    assert close(ours, theirs), (ours, theirs)


def test_pissa_finetune_evaluate_export_ner(tmp_path):
    check_method("pissa", "ner", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["ner", "classification", "sft"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_with_every_task(method, task, tmp_path):
    check_method(method, task, tmp_path)


def test_qlora_without_a_cuda_gpu_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    result = run_cli(*ner_args(out), "peft=qlora")
    assert result.code == 2
    lines = [line for line in result.err.splitlines() if line.startswith("llmtune: error")]
    assert len(lines) == 1 and "peft=qlora needs a CUDA GPU and bitsandbytes" in lines[0] and "peft=lora" in lines[0], result.err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU")
def test_qlora_on_cuda(tmp_path):
    check_method("qlora", "ner", tmp_path)


# ---------------------------------------------------------------------------------- resume
# The methods with a peft.dropout knob (the others have no dropout of their own).
WITH_DROPOUT = {"pissa", "lora_plus", "vera", "dora", "rslora", "qlora"}


def _resume_args(out: Path, method: str, *extra: str) -> list[str]:
    dropout = ["peft.dropout=0"] if method in WITH_DROPOUT else []
    return [*ner_args(out, steps=4), f"model.tokenizer={FIXED_TOKENIZER}", *NO_DROPOUT, f"peft={method}", *dropout,
            "trainer.save_every=2", "trainer.eval_every=null", *extra]


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    """What final/ holds: the adapter, or (bitfit) the whole model."""
    name = "adapter_model.safetensors" if (run / "final" / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(run / "final" / name)


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(run) if r["type"] == "train"}


@pytest.mark.slow
@pytest.mark.parametrize("method", [
    "pissa", "lora_plus", "vera", "dora", "rslora", "ia3", "ln_tuning", "bitfit",
    pytest.param("qlora", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU")),
])
def test_resume_matches_the_straight_run(method, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(*_resume_args(straight, method)).code == 0
    result = run_cli(*_resume_args(resumed, method, f"trainer.resume={straight / 'checkpoints' / 'step-2'}"))
    assert result.code == 0, result.err[-3000:]
    assert "resumed from" in result.err
    assert _losses(resumed) == {k: v for k, v in _losses(straight).items() if k > 2}
    a, b = (_final_weights(run) for run in (straight, resumed))
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
