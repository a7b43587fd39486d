"""`llmtune continual` end to end with tiny models: stage directories, the forgetting report,
resume of an interrupted sequence, the penalty's exactness under accumulation, the recipes.
Real-model measurements (methods' ordering, several processes) are marked slow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXED_TOKENIZER, NO_DROPOUT, ROOT, read_log, run_cli, subprocess_env
from llmtune.paths import recipe_names

TINY = ["model=tiny_bert", f"model.tokenizer={FIXED_TOKENIZER}", *NO_DROPOUT, "callbacks=quiet",
        "trainer.batch_size=4", "data.max_train_samples=24", "data.max_eval_samples=12"]


def _sequence(out: Path, *extra: str):
    return run_cli("continual", "sequence=topics", *TINY, "trainer.max_steps=4", "trainer.save_every=2", f"output_dir={out}", *extra)


def test_class_incremental_sequence_with_replay_writes_stages_and_report(tmp_path):
    out = tmp_path / "seq"
    result = _sequence(out, "continual=replay", "continual.buffer_size=8", "continual.replay_ratio=0.5")
    assert result.code == 0, result.err[-3000:]
    for stage in ("stage-1-business-science", "stage-2-sports-world"):
        assert (out / stage / "metrics.json").is_file() and (out / stage / "final" / "llmtune.json").is_file()
    # Class-incremental: the head grew and the first stage's labels kept their ids.
    labels = [json.loads((out / s / "final" / "llmtune.json").read_text())["labels"] for s in ("stage-1-business-science", "stage-2-sports-world")]
    assert labels == [["business", "science"], ["business", "science", "sports", "world"]]
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == "replay" and rep["metric"] == "accuracy" and len(rep["matrix"]) == 2
    assert rep["matrix"][0][1] is None  # stage 1's model cannot score classes it never saw
    assert all(v is not None for v in rep["matrix"][1])
    assert (out / "report.md").read_text().count("after ") == 2 and (out / "report.png").stat().st_size > 0
    # A second attempt without trainer.resume=auto is refused, and changes nothing.
    before = (out / "continual.json").read_text()
    again = _sequence(out, "continual=replay", "continual.buffer_size=8", "continual.replay_ratio=0.5")
    assert again.code == 2 and "trainer.resume=auto" in again.err
    assert (out / "continual.json").read_text() == before
    # Side by side.
    cmp = run_cli("continual", "compare", str(out), str(out), f"output={tmp_path / 'cmp'}")
    assert cmp.code == 0, cmp.err
    assert (tmp_path / "cmp.csv").read_text().splitlines()[0].startswith("method,avg final,BWT")


@pytest.mark.slow
def test_an_interrupted_sequence_resumes_to_the_same_report(tmp_path, monkeypatch):
    from llmtune.engine import loop

    straight = tmp_path / "straight"
    assert _sequence(straight, "continual=replay", "continual.buffer_size=8").code == 0
    real = loop._Fit._after_step

    def interrupt_in_stage_2(self):
        stop = real(self)
        if "stage-2" in str(self.trainer.run_dir) and self.state.step == 3:
            raise KeyboardInterrupt  # killed between checkpoints (step 2 is saved)
        return stop

    broken = tmp_path / "broken"
    monkeypatch.setattr(loop._Fit, "_after_step", interrupt_in_stage_2)
    with pytest.raises(KeyboardInterrupt):
        _sequence(broken, "continual=replay", "continual.buffer_size=8")
    monkeypatch.setattr(loop._Fit, "_after_step", real)
    assert "1" in json.loads((broken / "continual.json").read_text())["rows"]
    resumed = _sequence(broken, "continual=replay", "continual.buffer_size=8", "trainer.resume=auto")
    assert resumed.code == 0, resumed.err[-3000:]
    assert "skipped" in resumed.err + resumed.out
    a, b = (json.loads((d / "report.json").read_text()) for d in (straight, broken))
    assert a["matrix"] == b["matrix"] and a["bwt"] == b["bwt"]
    wa, wb = (load_file(d / "stage-2-sports-world" / "final" / "model.safetensors") for d in (straight, broken))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _penalised_run(out: Path, batch: int, accum: int, world: int) -> dict:
    """The penalised run of test_continual_job.py under torchrun."""
    script = ROOT / "tests" / "integration" / "test_continual_job.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port", "29531", str(script), str(out), str(batch), str(accum)]
    done = subprocess.run(cmd, env=subprocess_env(out.parent / "cache"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(out / "final" / "model.safetensors")


def _in_process(out: Path, batch: int, accum: int, lam: float = 1.0) -> dict:
    from test_continual_job import run

    from conftest import ner_args
    from llmtune.paths import conf_dir

    args = [a for a in ner_args(out, steps=2)[1:] if not a.startswith(("data.", "trainer.batch_size", "trainer.eval_every", "output_dir"))]
    return run(str(conf_dir()), args, out, batch, accum, lam)


@pytest.mark.slow
def test_penalty_adds_exactly_its_value_per_step_whatever_the_accumulation(tmp_path):
    """P x (labelled positions) in each micro-batch's loss sum is exactly P per optimizer step."""
    from test_continual_job import LAM, SHIFT

    whole, split = _in_process(tmp_path / "b8", 8, 1), _in_process(tmp_path / "b2a4", 2, 4)
    assert all(torch.allclose(whole[k], split[k], atol=1e-6) for k in whole)
    _in_process(tmp_path / "plain", 2, 4, lam=0.0)
    first = {name: next(r["loss"] for r in read_log(tmp_path / name) if r["type"] == "train") for name in ("b2a4", "plain")}
    trainable = sum(t.numel() for t in split.values())
    assert first["b2a4"] - first["plain"] == pytest.approx(0.5 * LAM * SHIFT**2 * trainable, rel=1e-4)


@pytest.mark.slow
def test_penalty_is_exact_across_processes(tmp_path):
    one = _penalised_run(tmp_path / "one", 8, 1, world=1)
    two = _penalised_run(tmp_path / "two", 2, 2, world=2)
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ewc", "replay"])
def test_a_sequence_runs_in_two_processes(tmp_path, method):
    """torchrun with 2 processes of 2 examples each vs 1 process of 4. ewc (a penalty and a
    Fisher estimated by every process): every stage trains the same weights and the report is
    the same. replay draws its rows per process (each its own stream), so it trains other
    examples: its report is complete. Either way one process writes the sequence's files."""
    extra = ["continual.buffer_size=8"] if method == "replay" else ["continual.fisher_samples=8"]
    args = ["continual", "sequence=topics", *TINY, "trainer.max_steps=3", "trainer.cpu=true", f"continual={method}", *extra]
    args = [a for a in args if not a.startswith("trainer.batch_size")]
    one = run_cli(*args, "trainer.batch_size=4", f"output_dir={tmp_path / 'one'}")
    assert one.code == 0, one.err[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "llmtune"]
    two = subprocess.run([*torchrun, *args, "trainer.batch_size=2", f"output_dir={tmp_path / 'two'}"], env=subprocess_env(tmp_path / "cache"),
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("report: ") == 1  # the main process alone prints and writes the report
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert b["matrix"][0][0] is not None and all(v is not None for v in b["matrix"][1])
    if method == "ewc":
        assert a["matrix"] == b["matrix"] and a["forgetting"] == b["forgetting"]
        for stage in ("stage-1-business-science", "stage-2-sports-world"):
            wa, wb = (load_file(tmp_path / d / stage / "final" / "model.safetensors") for d in ("one", "two"))
            assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa), stage


def test_the_continual_recipes_are_listed_as_continual_commands():
    from llmtune.recipes import command_of, describe

    names = [n for n in recipe_names() if n.startswith("continual-")]
    assert {f"continual-{s}-{m}" for s in ("ner", "classification") for m in ("naive", "replay", "ewc", "l2sp", "lwf", "adapters")} <= set(names)
    assert describe("continual-ner-ewc")[1] == "llmtune continual continual=ewc sequence=ner-domains optimizer.lr=2e-4"
    assert command_of("continual-classification-replay") == "continual" and command_of("ner-lora") == "finetune"
    assert run_cli("recipes").code == 0


@pytest.mark.slow
def test_a_continual_recipe_runs(tmp_path):
    out = tmp_path / "recipe"
    result = run_cli("run", "continual-ner-l2sp", *TINY, "trainer.max_steps=1", "data.max_train_samples=96", "data.max_eval_samples=8", f"output_dir={out}")
    assert result.code == 0, result.err[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == "l2sp" and rep["stages"] == ["news", "medical", "sports"]
    assert all(v is not None for row in rep["matrix"] for v in row)  # domain-incremental: every cell scores


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in recipe_names() if n.startswith("continual-")])
def test_each_continual_recipe_runs_with_a_tiny_model(tmp_path, name):
    out = tmp_path / "run"
    result = run_cli("run", name, *TINY, "trainer.max_steps=1", "data.max_train_samples=96", "data.max_eval_samples=8",
                     "continual.fisher_samples=4" if "ewc" in name else "trainer.log_every=1", f"output_dir={out}")
    assert result.code == 0, result.err[-3000:]
    assert json.loads((out / "report.json").read_text())["forgetting"] is not None


# (sequence of the recipes, naive must forget at least, replay and ewc must forget this much less)
ORDERING = {
    # Measured (seed 42, 60 steps a stage): naive 0.795, ewc 0.025, replay 0.0.
    "classification": (0.3, 0.2),
    # Measured (seed 42, 60 steps a stage, lr 2e-4): naive 0.141, ewc 0.080, replay 0.018.
    "ner": (0.1, 0.03),
}


@pytest.mark.slow
@pytest.mark.parametrize("sequence", sorted(ORDERING))
def test_replay_and_ewc_forget_less_than_naive(tmp_path, sequence):
    """MiniLM-L6 on a built-in sequence (topics, or the NER domains) at the recipes' settings."""
    naive_at_least, margin = ORDERING[sequence]
    forgetting = {}
    for method in ("naive", "replay", "ewc"):
        out = tmp_path / method
        result = run_cli("run", f"continual-{sequence}-{method}", "callbacks=quiet", f"output_dir={out}")
        assert result.code == 0, result.err[-3000:]
        forgetting[method] = json.loads((out / "report.json").read_text())["forgetting"]
    assert forgetting["naive"] > naive_at_least, forgetting  # the sequence makes naive fine-tuning forget
    assert forgetting["replay"] < forgetting["naive"] - margin and forgetting["ewc"] < forgetting["naive"] - margin, forgetting


def test_bad_stage_lists_are_one_line(tmp_path):
    result = run_cli("continual", *TINY, "stages=[{name: a, dta: {}}, {name: b}]", f"output_dir={tmp_path / 'x'}")
    assert result.code == 2 and "unknown key 'dta'" in result.err and "Did you mean 'data'" in result.err
    result = run_cli("continual", *TINY, "continual=lwf", "heads=per_task", f"output_dir={tmp_path / 'y'}")
    assert result.code == 2 and "heads=shared" in result.err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
