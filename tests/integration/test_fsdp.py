"""distributed=fsdp on two CPU processes (torchrun, gloo): it trains like DDP, writes sharded
checkpoints, resumes from one exactly, and still writes a whole model (or adapter) to final/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ASSETS, FIXED_TOKENIZER, NO_DROPOUT, ROOT, ner_args, read_log, run_cli, subprocess_env

pytestmark = pytest.mark.slow


def _args(out, *extra: str) -> list[str]:
    """4 steps of 8 examples (2 processes × 4), evaluated and checkpointed at steps 2 and 4."""
    args = [a for a in ner_args(out, steps=4) if a != "finetune"]
    return [*args, f"model.tokenizer={FIXED_TOKENIZER}", *NO_DROPOUT, *extra]


def _torchrun(env, *args: str, command: str = "finetune") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "llmtune", command, *args]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(run_dir) if r["type"] == "train"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An FSDP run and the same run under plain DDP (distributed=none), both on 2 processes."""
    root = tmp_path_factory.mktemp("fsdp")
    env = subprocess_env(root / "cache")
    _torchrun(env, *_args(root / "fsdp", "distributed=fsdp"))
    _torchrun(env, *_args(root / "ddp"))
    return {"root": root, "env": env, "fsdp": root / "fsdp", "ddp": root / "ddp"}


def test_fsdp_trains_like_ddp(runs):
    fsdp, ddp = _losses(runs["fsdp"]), _losses(runs["ddp"])
    assert sorted(fsdp) == [1, 2, 3, 4]
    for step in fsdp:
        assert abs(fsdp[step] - ddp[step]) < 1e-6, (step, fsdp[step], ddp[step])
    assert "fsdp: one unit per BertLayer" in (runs["fsdp"] / "run.log").read_text()


def test_final_is_the_whole_model(runs):
    from transformers import AutoModelForTokenClassification

    final = runs["fsdp"] / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == ["BertForTokenClassification"]
    weights, reference = load_file(final / "model.safetensors"), load_file(runs["ddp"] / "final" / "model.safetensors")
    assert weights.keys() == reference.keys()
    for key in weights:
        torch.testing.assert_close(weights[key], reference[key], atol=1e-6, rtol=0)
    AutoModelForTokenClassification.from_pretrained(final)  # loads with plain transformers


def test_checkpoints_are_sharded(runs):
    from llmtune.engine import checkpoint

    step = runs["fsdp"] / "checkpoints" / "step-2"
    names = {p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file()}
    assert {"sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp", "scheduler.pt", "rng-rank0.pt", "rng-rank1.pt", "state.json"} == names
    files = json.loads((step / "state.json").read_text())["files"]
    assert set(files) == names - {"state.json"}
    assert checkpoint.is_loadable(step)


def test_a_damaged_sharded_checkpoint_is_skipped(runs, tmp_path):
    from llmtune.engine import checkpoint

    copy = tmp_path / "checkpoints"
    shutil.copytree(runs["fsdp"] / "checkpoints", copy)
    shard = copy / "step-4" / "sharded" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])  # a save cut short
    assert not checkpoint.is_loadable(copy / "step-4")
    assert checkpoint.latest_checkpoint(copy) == copy / "step-2"


def test_resume_from_a_sharded_checkpoint_matches(runs):
    resumed = runs["root"] / "resumed"
    _torchrun(runs["env"], *_args(resumed, "distributed=fsdp", f"trainer.resume={runs['fsdp'] / 'checkpoints' / 'step-2'}"))
    straight, again = _losses(runs["fsdp"]), _losses(resumed)
    assert sorted(again) == [3, 4]
    for step in again:
        assert again[step] == straight[step], (step, again[step], straight[step])
    a, b = load_file(runs["fsdp"] / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_sharded_checkpoint_needs_fsdp(runs, tmp_path):
    # One process at batch 8: the same step size, so only the checkpoint layout differs.
    args = [a for a in _args(tmp_path / "plain", f"trainer.resume={runs['fsdp'] / 'checkpoints' / 'step-2'}") if not a.startswith("trainer.batch_size")]
    result = run_cli("finetune", *args, "trainer.batch_size=8")
    assert result.code == 2, result.err[-2000:]
    assert "was written with distributed=fsdp" in result.err


def test_fsdp_lora_writes_the_adapter(runs):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForTokenClassification

    out = runs["root"] / "lora"
    _torchrun(runs["env"], *_args(out, "distributed=fsdp", "peft=lora", "peft.dropout=0"))
    final = out / "final"
    adapter = load_file(final / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("classifier" in k for k in adapter)
    assert set(json.loads((out / "checkpoints" / "step-4" / "state.json").read_text())["files"]) >= {"sharded/.metadata"}
    base = AutoModelForTokenClassification.from_config(AutoConfig.from_pretrained(final))
    PeftModel.from_pretrained(base, final)


def test_best_checkpoint_is_restored_from_shards(runs):
    """At lr 1.0 step 2 is worse than step 1, so with trainer.load_best (margin 0) final/ gets
    step 1's weights, read back from its shards by every process. A tied Llama (lm_head =
    embed_tokens) saves like unsharded."""
    args = [
        "task=clm", "model=tiny_llama", f"data.train_file={ASSETS / 'corpus.txt'}", "task.max_length=32", "trainer.max_steps=2",
        "trainer.max_epochs=null", "trainer.batch_size=4", "trainer.eval_every=1", "trainer.log_every=1", "trainer.eval_at_start=false",
        "optimizer.lr=1.0", "scheduler=constant", "trainer.load_best=true", "trainer.load_best_margin=0",
    ]
    fsdp, ddp = runs["root"] / "best-fsdp", runs["root"] / "best-ddp"
    _torchrun(runs["env"], *args, f"output_dir={fsdp}", "distributed=fsdp", command="pretrain")
    _torchrun(runs["env"], *args, f"output_dir={ddp}", command="pretrain")
    for run in (fsdp, ddp):
        assert "loaded the best checkpoint (step 1" in (run / "run.log").read_text()
    a, b = load_file(fsdp / "final" / "model.safetensors"), load_file(ddp / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
