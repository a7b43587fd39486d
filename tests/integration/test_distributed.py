"""Two processes (torchrun, CPU/gloo) at batch 4 train exactly like one process at batch 8."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import FIXED_TOKENIZER, NO_DROPOUT, ROOT, ner_args, read_log, subprocess_env

pytestmark = pytest.mark.slow


def _args(out, batch_size: int, *extra: str) -> list[str]:
    args = [a for a in ner_args(out, steps=3) if a != "finetune" and not a.startswith("trainer.batch_size")]
    return [*args, f"trainer.batch_size={batch_size}", "trainer.grad_accum=1", "trainer.group_by_length=true", *NO_DROPOUT, *extra]


def _train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(run_dir) if r["type"] == "train"}


def _run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "llmtune", "finetune", *args]


def test_two_processes_match_one_process(tmp_path):
    env = subprocess_env(tmp_path / "cache")
    fixed = f"model.tokenizer={FIXED_TOKENIZER}"
    single = tmp_path / "single"
    _run([sys.executable, "-m", "llmtune", "finetune", *_args(single, 8, fixed)], env)
    double = tmp_path / "double"
    proc = _run(_torchrun(*_args(double, 4, fixed)), env)
    assert "2 process(es)" in proc.stderr + (double / "run.log").read_text()

    one, two = _train_losses(single), _train_losses(double)
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, (step, one[step], two[step])
    # Outputs are written once, by the main process.
    assert (double / "metrics.json").is_file() and (double / "final").is_dir()
    assert len([r for r in read_log(double) if r["type"] == "train"]) == 3


def test_two_processes_with_a_trained_tokenizer(tmp_path):
    """Each rank trains the scratch model's tokenizer itself: they must agree."""
    env = subprocess_env(tmp_path / "cache")
    single = tmp_path / "single"
    _run([sys.executable, "-m", "llmtune", "finetune", *_args(single, 8)], env)
    double = tmp_path / "double"
    _run(_torchrun(*_args(double, 4)), env)
    one, two = _train_losses(single), _train_losses(double)
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5
