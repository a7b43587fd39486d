"""The run directory (llmtune/rundir.py): one run at a time, nothing written by a refused run,
a failed attempt does not block its retry, and an unusable output_dir is one clear line.

The lock is tested with two real processes: a child `llmtune finetune` holds its run directory
(it pauses after its first checkpoint), a second run is refused naming the child's PID, and
after the child is killed with SIGKILL the directory resumes with trainer.resume=auto.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import select
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ASSETS, FIXED_TOKENIZER, ROOT, cls_args, nan_loss_at_call, ner_args, run_cli, subprocess_env
from llmtune.rundir import LOCK_FILE

# A real `llmtune finetune` that stops after its first checkpoint, still holding its directory.
HOLDER = """
import sys, time
from llmtune.engine import checkpoint

real_save = checkpoint.save

def save(*args, **kwargs):
    path = real_save(*args, **kwargs)
    print("saved", path, flush=True)
    time.sleep(600)  # until the test kills this process
    return path

checkpoint.save = save
from llmtune.cli import main
main(sys.argv[1:])
"""


def _ner(out: Path, *extra: str) -> list[str]:
    """A 4-step NER run, checkpointed at step 2 and 4, with the saved tokenizer (resumable)."""
    return [*ner_args(out, steps=4), f"model.tokenizer={FIXED_TOKENIZER}", "trainer.save_every=2", "trainer.eval_every=null", *extra]


def _cls(out: Path, *extra: str) -> list[str]:
    return [*cls_args(out, steps=2), f"model.tokenizer={FIXED_TOKENIZER}", "trainer.eval_every=null", *extra]


def _snapshot(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every file and folder under `directory` (hidden ones too), but `skip`: mtime, size, hash."""
    out = {}
    for path in sorted([directory, *directory.rglob("*")]):
        name = str(path.relative_to(directory))
        if name in skip:
            continue
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[name] = (st.st_mtime_ns if path.is_file() else None, st.st_size if path.is_file() else None, digest)
    return out


def _one_line_error(result, alone: bool = True) -> str:
    """The error line of a run that exited 2 without a traceback; `alone`: it is all the run
    printed (refused before any log line)."""
    assert result.code == 2, result.text[-3000:]
    assert "Traceback" not in result.text
    errors = [line for line in result.err.strip().splitlines() if line.startswith("llmtune: error: ")]
    assert len(errors) == 1 and result.err.strip().endswith(errors[0]), result.err
    assert not alone or result.err.strip() == errors[0], result.err
    return errors[0]


def _wait_for_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


# ------------------------------------------------------------------ the lock (two processes)
def test_a_second_run_is_refused_while_the_first_runs_and_resumes_after_kill_9(tmp_path):
    out = tmp_path / "run"
    child_log = (tmp_path / "holder.err").open("w")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *_ner(out)], cwd=ROOT, env=subprocess_env(tmp_path / "cache"),
        stdout=subprocess.PIPE, stderr=child_log, text=True,
    )
    try:
        line = _wait_for_line(holder, timeout=300)
        assert line.startswith("saved"), (tmp_path / "holder.err").read_text()[-3000:]
        before = _snapshot(out)

        for extra in ([], ["trainer.resume=auto"], ["trainer.overwrite_output_dir=true"]):
            refused = _one_line_error(run_cli(*_ner(out, *extra)))
            assert f"in use by another llmtune run (pid {holder.pid})" in refused
        assert _snapshot(out) == before  # not a byte changed, not even the lock file

        holder.kill()  # SIGKILL: no clean-up runs; the kernel drops the lock
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        child_log.close()

    resumed = run_cli(*_ner(out, "trainer.resume=auto"))
    assert resumed.code == 0, resumed.err[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step-2'} at step 2" in resumed.err
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 4


def test_claim_is_refused_while_the_lock_is_held(tmp_path):
    """The lock itself, not only the early check: the run that loses a race to claim is refused."""
    from llmtune.errors import UserError
    from llmtune.rundir import RunDir, RunLock

    tcfg = SimpleNamespace(resume=None, overwrite_output_dir=False)
    first = RunLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            RunDir(tmp_path, tcfg, is_main=True).claim()
    finally:
        first.release()
    second = RunDir(tmp_path, tcfg, is_main=True)
    second.claim()  # free again
    second.release()


# ------------------------------------------------------------------ a refused resume writes nothing
def test_refused_resume_leaves_the_run_byte_identical_and_an_accepted_one_keeps_the_old_config(tmp_path):
    out = tmp_path / "run"
    first = run_cli(*_ner(out, "trainer.max_steps=2"))
    assert first.code == 0, first.err[-3000:]
    config = (out / "config.yaml").read_bytes()
    before = _snapshot(out, skip=(LOCK_FILE,))

    # A full fine-tune's checkpoints cannot go on as LoRA: refused after the data and model are built.
    refused = run_cli(*_ner(out, "trainer.max_steps=4", "trainer.resume=auto", "peft=lora"))
    assert refused.code == 2, refused.err[-3000:]
    assert "peft: none -> lora" in refused.err
    assert (out / "config.yaml").read_bytes() == config
    assert _snapshot(out, skip=(LOCK_FILE,)) == before  # config.yaml, .hydra/, run.log, train_log: all as they were

    allowed = run_cli(*_ner(out, "trainer.max_steps=4", "trainer.resume=auto", "trainer.batch_size=3", "trainer.resume_allow_changes=true"))
    assert allowed.code == 0, allowed.err[-3000:]
    assert (out / "config.until-step-2.yaml").read_bytes() == config  # what steps 1-2 ran with
    assert "batch_size: 3" in (out / "config.yaml").read_text()
    assert "trainer.batch_size=3" in (out / ".hydra" / "overrides.yaml").read_text()


# ------------------------------------------------------------------ a failed attempt does not block its retry
def _bad_rows(tmp_path: Path) -> list[str]:
    bad = tmp_path / "bad.jsonl"
    bad.write_text((ASSETS / "cls_train.jsonl").read_text() + '{"text": "cut off\n')
    return [f"data.train_file={bad}"]


@contextlib.contextmanager
def _without_bitsandbytes():
    real = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
        yield


FAILURES = [  # overrides that fail the run after its directory exists, what the error says, a context
    pytest.param(_bad_rows, "line 17 is not valid JSON", contextlib.nullcontext, id="bad-data-row"),
    pytest.param(lambda _: ["trainer.max_tokens=4"], "trainer.max_tokens=4 is smaller", contextlib.nullcontext, id="max-tokens-too-small"),
    pytest.param(lambda _: ["trainer.batch_size=64"], "fewer than one optimizer step", contextlib.nullcontext, id="too-few-rows"),
    pytest.param(lambda _: ["optimizer=adamw8bit"], "llmtune[bnb]", _without_bitsandbytes, id="missing-optional-package"),
]


@pytest.mark.parametrize("failing,message,context", FAILURES)
def test_a_run_refused_while_building_writes_nothing_and_the_fix_reruns_in_place(failing, message, context, tmp_path):
    out = tmp_path / "run"
    with context():
        failed = run_cli(*_cls(out), *failing(tmp_path))
    assert message in _one_line_error(failed, alone=False)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # no config.yaml, run.log or .hydra/

    fixed = run_cli(*_cls(out))
    assert fixed.code == 0, fixed.err[-3000:]
    assert (out / "metrics.json").is_file() and (out / "final").is_dir()


def test_an_attempt_that_failed_before_its_first_step_is_replaced_silently(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    with nan_loss_at_call(1):
        failed = run_cli(*_cls(out))
    assert failed.code == 3, failed.err[-3000:]
    assert {"config.yaml", "run.log", ".hydra"} <= {p.name for p in out.iterdir()}  # written: it had started training
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())

    fixed = run_cli(*_cls(out))
    assert fixed.code == 0, fixed.err[-3000:]
    assert "already holds a run" not in fixed.err
    assert "non-finite" not in (out / "run.log").read_text()  # the failed attempt's log was cleared
    assert [r["step"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if r["type"] == "train"] == [1, 2]
    assert (out / "notes.txt").read_text() == "the user's own file\n"  # never touched


def _attempt(run_dir: Path, log_lines: list[dict]) -> None:
    """What an attempt leaves: llmtune's lock file, config.yaml, run.log, train_log.jsonl."""
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text("12345\n")
    (run_dir / "config.yaml").write_text("command: finetune\noutput_dir: x\ntrainer:\n  max_steps: 2\n")
    (run_dir / "run.log").write_text("a line\n")
    (run_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log_lines))


def test_what_counts_as_a_run(tmp_path):
    from llmtune.errors import UserError
    from llmtune.rundir import check_run_dir

    fresh = SimpleNamespace(resume=None, overwrite_output_dir=False)
    _attempt(tmp_path / "evaluated", [{"type": "eval", "step": 0, "f1": 0.1}])
    check_run_dir(tmp_path / "evaluated", fresh)  # an evaluation at step 0 is no training

    _attempt(tmp_path / "stepped", [{"type": "train", "step": 1, "loss": 2.0}])
    with pytest.raises(UserError, match="already holds a run"):
        check_run_dir(tmp_path / "stepped", fresh)  # a logged step is a run, checkpoint or not

    _attempt(tmp_path / "foreign", [])
    (tmp_path / "foreign" / "config.yaml").write_text("my: own config\n")
    with pytest.raises(UserError, match="already holds a run"):
        check_run_dir(tmp_path / "foreign", fresh)  # a config.yaml llmtune did not write

    _attempt(tmp_path / "never-locked", [])
    (tmp_path / "never-locked" / LOCK_FILE).unlink()
    with pytest.raises(UserError, match="already holds a run"):
        check_run_dir(tmp_path / "never-locked", fresh)


# ------------------------------------------------------------------ output_dir that cannot hold a run
@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_output_dir_that_is_a_file_is_one_line(where, multirun, tmp_path):
    file = tmp_path / "a_file"
    file.write_text("not a directory\n")
    out = file if where == "file" else file / "run"
    sweep = ["-m", "optimizer.lr=1e-4,2e-4"] if multirun else []
    line = _one_line_error(run_cli(*_cls(out), *sweep))
    assert f"output_dir={out}" in line and "a file" in line
    assert file.read_text() == "not a directory\n"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_output_dir_without_write_permission_is_one_line(tmp_path):
    locked = tmp_path / "read_only"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = _one_line_error(run_cli(*_cls(locked / "run")))
    finally:
        locked.chmod(0o755)
    assert "no permission to write" in line and str(locked) in line
