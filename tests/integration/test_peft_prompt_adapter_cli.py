"""The CLI with prompt learning (peft=prompt_tuning, prefix, p_tuning) and bottleneck adapters
(peft=adapter): finetune, evaluate, predict and export per supported task; resume exactness;
the combinations that are refused, in one line, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXED_TOKENIZER, NO_DROPOUT, SFT_SAMPLES, cls_args, ner_args, read_log, run_cli

# What each method runs; the other tasks are refused (test_refusals).
SUPPORTED = [
    ("prompt_tuning", "classification"), ("prompt_tuning", "ner"), ("prompt_tuning", "sft"),
    ("p_tuning", "classification"), ("p_tuning", "ner"), ("p_tuning", "sft"),
    ("prefix", "sft"),
    ("adapter", "classification"), ("adapter", "ner"), ("adapter", "sft"),
]
# Small method settings for tiny models.
SMALL = {"prompt_tuning": ["peft.num_virtual_tokens=4"], "p_tuning": ["peft.num_virtual_tokens=4", "peft.encoder_hidden_size=16"],
         "prefix": ["peft.num_virtual_tokens=4", "peft.encoder_hidden_size=16"], "adapter": ["peft.reduction=4"]}
# What a checkpoint of each method holds: the method's weights and the task head, nothing else.
TRAINED = {"prompt_tuning": "prompt_encoder", "p_tuning": "prompt_encoder", "prefix": "prompt_encoder", "adapter": ".adapter."}
HEAD = "classifier."  # the tiny BERT's task head (peft names its trained copy classifier.modules_to_save...)


def _sft_args(out: Path, data: Path, steps: int = 2) -> list[str]:
    return ["finetune", "task=sft", "model=tiny_llama", "task.max_length=64", f"data.train_file={data}", "data.validation_split=0.25",
            f"trainer.max_steps={steps}", "trainer.max_epochs=null", "trainer.batch_size=2", "trainer.eval_every=null", f"output_dir={out}"]


def _args(task: str, out: Path, tmp_path: Path, steps: int = 2) -> list[str]:
    if task == "sft":
        data = tmp_path / "sft.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in SFT_SAMPLES * 2))
        return _sft_args(out, data, steps)
    return [*(cls_args if task == "classification" else ner_args)(out, steps=steps), "trainer.eval_every=null"]


def _inputs(task: str) -> list:
    return {"classification": ["a fine film", "dull and slow"], "ner": ["John Smith lives in Paris"], "sft": [s["prompt"] for s in SFT_SAMPLES[:2]]}[task]


def error_line(result) -> str:
    assert result.code == 2, result.text[-2000:]
    lines = [line for line in result.err.splitlines() if line.startswith("llmtune: error")]
    assert len(lines) == 1, result.err
    return lines[0]


# ------------------------------------------------------------------ refusals (fast: before anything loads)
@pytest.mark.parametrize(("extra", "says"), [
    (["finetune", "task=classification", "model=tiny_bert", "peft=prefix"], "peft=prefix works on causal LMs only"),
    (["finetune", "task=sft", "model=tiny_llama", "task.packing=true", "peft=prompt_tuning"], "set task.packing=false"),
    (["finetune", "task=ner", "model=tiny_bert", "task.max_length=250", "peft=p_tuning"], "lower task.max_length to 236"),
    (["finetune", "task=classification", "model=tiny_bert", "peft=prompt_tuning", "peft.init_text=positive or negative"], "model.tokenizer="),
    (["pretrain", "task=mlm", "model=tiny_bert", "peft=p_tuning"], "task=mlm (FEATURE_EXTRACTION) is not supported"),
])
def test_refusals(extra, says, tmp_path):
    out = tmp_path / "run"
    line = error_line(run_cli(*extra, f"output_dir={out}", "trainer.max_steps=1"))
    assert says in line
    assert not out.exists()


@pytest.mark.slow  # builds the model (the unit tests cover the check in process)
def test_a_decoder_classifier_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    args = [*cls_args(out, steps=1), "model=tiny_llama", "peft=prompt_tuning"]
    assert "pools the last position" in error_line(run_cli(*args))
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()


# ------------------------------------------------------------------ every supported method x task (slow)
def _logits(path: Path, texts: list) -> torch.Tensor:
    from llmtune.trained import load_trained

    trained = load_trained(path)
    batch = trained.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return trained.model(**batch).logits


@pytest.mark.slow
@pytest.mark.parametrize(("method", "task"), SUPPORTED)
def test_finetune_evaluate_predict_export(method, task, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*_args(task, out, tmp_path), f"peft={method}", *SMALL[method])
    assert result.code == 0, result.err[-3000:]
    assert f"peft={method})" in result.err  # the trainable/total count line

    saved = load_file(out / "checkpoints" / "step-2" / "trainable.safetensors")
    assert saved and all(TRAINED[method] in name or HEAD in name for name in saved), sorted(saved)[:5]
    info = json.loads((out / "final" / "llmtune.json").read_text())
    assert info["peft"] == method

    evaluated = run_cli("evaluate", out / "final")
    assert evaluated.code == 0, evaluated.err[-2000:]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(t) + "\n" for t in _inputs(task)))
    params = ["max_new_tokens=4"] if task == "sft" else []
    assert run_cli("predict", out / "final", f"input={inputs}", f"output={tmp_path / 'a.jsonl'}", *params).code == 0

    export = tmp_path / "export"
    exported = run_cli("export", out / "final", f"output={export}")
    assert exported.code == 0, exported.err[-2000:]
    assert "nothing to fold into the weights" in exported.out
    assert run_cli("predict", export, f"input={inputs}", f"output={tmp_path / 'b.jsonl'}", *params).code == 0
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    torch.testing.assert_close(_logits(export, _inputs(task)), _logits(out / "final", _inputs(task)), atol=0, rtol=0)


# ------------------------------------------------------------------ resume (slow)
@pytest.mark.slow
@pytest.mark.parametrize("method", ["prompt_tuning", "adapter", "p_tuning", "prefix"])
def test_resume_matches_the_straight_run(method, tmp_path):
    def args(out: Path, *extra: str) -> list[str]:
        if method == "prefix":  # causal LMs only; the tiny Llama has no dropout and its tokenizer is trained the same each run
            base = [*_args("sft", out, tmp_path, steps=4), "trainer.log_every=1"]
        else:
            base = [*ner_args(out, steps=4), f"model.tokenizer={FIXED_TOKENIZER}", *NO_DROPOUT]
        return [*base, f"peft={method}", *SMALL[method], "trainer.save_every=2", "trainer.eval_every=null", *extra]

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(*args(straight)).code == 0
    result = run_cli(*args(resumed, f"trainer.resume={straight / 'checkpoints' / 'step-2'}"))
    assert result.code == 0, result.err[-3000:]
    losses = {r["step"]: r["loss"] for r in read_log(straight) if r["type"] == "train"}
    again = {r["step"]: r["loss"] for r in read_log(resumed) if r["type"] == "train"}
    assert sorted(again) == [3, 4] and all(again[s] == losses[s] for s in again)
    name = "adapter.safetensors" if method == "adapter" else "adapter_model.safetensors"
    a, b = load_file(straight / "final" / name), load_file(resumed / "final" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((straight / "metrics.json").read_text())["validation"] == json.loads((resumed / "metrics.json").read_text())["validation"]
