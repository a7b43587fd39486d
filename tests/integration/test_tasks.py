"""Every task trains end to end through the real CLI, with each PEFT method that makes sense,
and leaves the output contract: config.yaml, train_log.jsonl, metrics.json, checkpoints/, final/.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import ASSETS, cls_args, lm_args, ner_args, read_log, run_cli

CASES = [
    ("ner", "none"), ("ner", "lora"), ("ner", "bitfit"),
    ("classification", "none"), ("classification", "lora"), ("classification", "bitfit"),
    ("mlm", "none"),
    ("clm", "none"), ("clm", "lora"),
]
STEPS = {"ner": 4, "classification": 4, "mlm": 3, "clm": 3}


def _args(task: str, out: Path) -> list[str]:
    if task == "ner":  # with a test split too
        return [*ner_args(out, STEPS[task]), f"data.test_file={ASSETS / 'ner_dev.conll'}"]
    if task == "classification":
        return cls_args(out, STEPS[task])
    return lm_args(task, out, STEPS[task])


@pytest.fixture(scope="module", params=CASES, ids=[f"{t}-{p}" for t, p in CASES])
def run(request, tmp_path_factory):
    task, peft = request.param
    out = tmp_path_factory.mktemp(f"{task}-{peft}") / "run"
    result = run_cli(*_args(task, out), f"peft={peft}")
    assert result.code == 0, result.err[-3000:]
    return SimpleNamespace(task=task, peft=peft, dir=out, result=result, steps=STEPS[task])


def test_reports_trainable_parameters(run):
    text = run.result.err + (run.dir / "run.log").read_text()
    assert "trainable of" in text
    assert f"peft={run.peft}" in text


def test_config_yaml_is_resolved(run):
    text = (run.dir / "config.yaml").read_text()
    assert "${" not in text
    cfg = yaml.safe_load(text)
    assert Path(cfg["output_dir"]) == run.dir.resolve()
    assert cfg["task"]["name"] == run.task
    assert cfg["trainer"]["max_steps"] == run.steps
    assert cfg["command"] == ("pretrain" if run.task in ("mlm", "clm") else "finetune")


def test_train_log(run):
    lines = (run.dir / "train_log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # one JSON object per line
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, run.steps + 1))  # log_every=1
    for r in train:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["lr"] >= 0
        assert r["tokens_per_s"] > 0
    metrics = json.loads((run.dir / "metrics.json").read_text())
    main = metrics["main_metric"]
    eval_steps = [r["step"] for r in evals]
    assert 2 in eval_steps and run.steps in eval_steps  # eval_every=2 and at the end
    if run.task in ("mlm", "clm"):
        assert eval_steps[0] == 0  # pretrain evaluates at start
    for r in evals:
        assert r["split"] == "validation"
        assert main in r and "loss" in r


def test_metrics_json(run):
    metrics = json.loads((run.dir / "metrics.json").read_text())
    main = {"ner": "f1", "classification": "accuracy", "mlm": "loss", "clm": "loss"}[run.task]
    assert metrics["task"] == run.task
    assert metrics["main_metric"] == main
    assert metrics["greater_is_better"] == (main != "loss")
    assert main in metrics["validation"]
    assert math.isfinite(metrics["validation"]["loss"])
    assert metrics["train"]["steps"] == run.steps
    if run.task == "ner":
        assert main in metrics["test"]
        for key in ("precision", "recall", "f1", "accuracy"):
            assert 0.0 <= metrics["test"][key] <= 1.0
    else:
        assert "test" not in metrics
    if run.task in ("mlm", "clm"):
        assert metrics["validation"]["perplexity"] == pytest.approx(math.exp(metrics["validation"]["loss"]), rel=1e-6)
        assert "initial_validation" in metrics
    # The run's summary table is printed on stdout.
    assert main in run.result.out


def test_checkpoints(run):
    directory = run.dir / "checkpoints"
    names = sorted(p.name for p in directory.iterdir())
    assert f"step-{run.steps}" in names
    assert not [n for n in names if not n.startswith("step-")]  # no temporary folders left
    for name in names:
        state = json.loads((directory / name / "state.json").read_text())
        assert state["step"] == int(name.split("-")[1])
        assert (directory / name / "trainable.safetensors").is_file()
        assert (directory / name / "optimizer.pt").is_file()
        assert state["fingerprint"]["peft"] == run.peft


def _final_model(run):
    """Load final/ the way a user would: AutoModelFor* for full/BitFit, base + adapter for LoRA."""
    import transformers
    from accelerate.utils import set_seed

    final = run.dir / "final"
    info = json.loads((final / "llmtune.json").read_text())
    auto = getattr(transformers, info["auto_class"])
    if run.peft == "lora":
        from peft import PeftModel

        # A model built from config has random base weights: rebuild them with the run's seed.
        config = transformers.AutoConfig.from_pretrained(final)
        set_seed(yaml.safe_load((run.dir / "config.yaml").read_text())["seed"])
        base = auto.from_config(config)
        return PeftModel.from_pretrained(base, final).eval()
    return auto.from_pretrained(final).eval()


def test_final_folder(run):
    final = run.dir / "final"
    info = json.loads((final / "llmtune.json").read_text())
    assert info["task"] == run.task
    assert info["peft"] == run.peft
    assert (final / "tokenizer.json").is_file() or (final / "vocab.txt").is_file()
    assert (final / "config.json").is_file()
    if run.peft == "lora":
        assert (final / "adapter_config.json").is_file()
        assert (final / "adapter_model.safetensors").is_file()
        assert not (final / "model.safetensors").exists()
    else:
        assert (final / "model.safetensors").is_file()
    model = _final_model(run)
    config = model.config
    if run.task in ("ner", "classification"):
        labels = info["labels"]
        assert labels and labels == sorted(labels)
        assert {int(k): v for k, v in config.id2label.items()} == dict(enumerate(labels))
        assert config.label2id == {label: i for i, label in enumerate(labels)}
        if run.task == "ner":
            assert labels == ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]  # tests/assets/ner_train.conll
        else:
            assert labels == ["neg", "pos"]


def test_final_loads_the_same_twice(run):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.dir / "final")
    inputs = tokenizer(["The morning market opens before the sun is up."], return_tensors="pt")
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        a = _final_model(run)(**inputs).logits
        b = _final_model(run)(**inputs).logits
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()


def test_final_model_reproduces_the_validation_loss(run):
    """final/ holds what was trained: evaluated again, it gives the validation loss reported."""
    from accelerate import Accelerator
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from llmtune.data.load import load_raw
    from llmtune.engine.loop import eval_context, eval_loader

    cfg = OmegaConf.load(run.dir / "config.yaml")
    task = instantiate(cfg.task)
    raw, _ = load_raw(cfg.data, task, cfg.seed)
    task.setup(raw)
    tokenizer = AutoTokenizer.from_pretrained(run.dir / "final")
    data = task.preprocess(raw, tokenizer)
    accelerator = Accelerator(cpu=True)
    loader, order = eval_loader(task, tokenizer, data["validation"], cfg.trainer, accelerator)
    metrics = task.evaluate(_final_model(run), loader, eval_context(task, tokenizer, raw["validation"], order, accelerator))
    reported = json.loads((run.dir / "metrics.json").read_text())["validation"]
    assert metrics["loss"] == pytest.approx(reported["loss"], rel=1e-4, abs=1e-5)
    main = task.main_metric
    assert metrics[main] == pytest.approx(reported[main], rel=1e-4, abs=1e-5)


def test_log_records_match_checkpoint_states(run):
    records = read_log(run.dir)
    last = json.loads((run.dir / "checkpoints" / f"step-{run.steps}" / "state.json").read_text())
    assert last["step"] == max(r["step"] for r in records)
