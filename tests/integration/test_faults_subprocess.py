"""Faults that need a real process: SIGKILL in the middle of a checkpoint save, SIGTERM/SIGINT
during training, and one rank of a torchrun job failing.

Faults are injected with a `sitecustomize.py` written to a temporary folder put first on
PYTHONPATH: Python imports it at start-up, before llmtune, in every process of the command, and
it patches only when its environment variable asks it to. Nothing in llmtune is changed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXED_TOKENIZER, ROOT, ner_args, read_log, run_cli

pytestmark = pytest.mark.slow

SITECUSTOMIZE = '''\
"""Test fault injection (tests/integration/test_faults_subprocess.py)."""
import os
import signal

_kill_at = os.environ.get("LLMTUNE_TEST_KILL_SAVE")      # step whose checkpoint save is killed
_slow_save = os.environ.get("LLMTUNE_TEST_SLOW_SAVE")    # seconds every checkpoint save takes longer
_fail_at = os.environ.get("LLMTUNE_TEST_FAIL_RANK_STEP")  # "RANK:STEP": that rank raises at that step

if _kill_at or _slow_save:
    import time
    import safetensors.torch as _st

    _real_save_file = _st.save_file

    def _save_file(tensors, filename, *args, **kwargs):
        if _slow_save:
            time.sleep(float(_slow_save))
        if _kill_at and f".tmp-step-{_kill_at}" in str(filename):
            with open(filename, "wb") as f:  # a partly written file, as a kill mid-write leaves
                f.write(b"\\0" * 64)
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return _real_save_file(tensors, filename, *args, **kwargs)

    _st.save_file = _save_file

if _fail_at and "RANK" in os.environ:  # only torchrun's workers have RANK, not the launcher
    _rank, _step = (int(x) for x in _fail_at.split(":"))
    if int(os.environ["RANK"]) == _rank:
        from llmtune.engine import loop as _loop

        _real_optimizer_step = _loop._Fit._optimizer_step

        def _optimizer_step(self, batches):
            if self.state.step + 1 == _step:
                raise RuntimeError(f"injected failure in rank {_rank} at step {_step}")
            return _real_optimizer_step(self, batches)

        _loop._Fit._optimizer_step = _optimizer_step
'''


def _env(tmp_path: Path, **extra: str) -> dict:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "LLMTUNE_CACHE": os.environ["LLMTUNE_CACHE"],
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep), **extra}
    env.pop("LLMTUNE_DEBUG", None)
    return env


def _args(out: Path, steps: int, *extra: str, batch: int = 3) -> list[str]:
    base = [a for a in ner_args(out, steps=steps) if not a.startswith(("trainer.batch_size=", "trainer.eval_every="))]
    return [*base, f"trainer.batch_size={batch}", "trainer.eval_every=null", f"model.tokenizer={FIXED_TOKENIZER}", *extra]


def _llmtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmtune", *args]  # args start with the subcommand


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(run_dir) if r["type"] == "train"}


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir()) if (run_dir / "checkpoints").is_dir() else []


# ------------------------------------------------------------------ 2b. SIGKILL mid-save
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_and_resume_auto_works(tmp_path):
    from llmtune.engine import checkpoint

    out = tmp_path / "run"
    args = _args(out, 6, "trainer.save_every=2", "trainer.save_total_limit=10")
    proc = subprocess.run(_llmtune(*args), cwd=ROOT, env=_env(tmp_path, LLMTUNE_TEST_KILL_SAVE="4"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
    assert _checkpoints(out) == [".tmp-step-4", "step-2"]  # killed inside step 4's save
    assert checkpoint.is_loadable(out / "checkpoints" / "step-2")
    assert checkpoint.latest_checkpoint(out / "checkpoints") == out / "checkpoints" / "step-2"

    result = run_cli(*args, "trainer.resume=auto")
    assert result.code == 0, result.err[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step-2'} at step 2" in result.err
    assert _checkpoints(out) == ["step-2", "step-4", "step-6"]
    assert all(checkpoint.is_loadable(out / "checkpoints" / name) for name in _checkpoints(out))
    assert [r["step"] for r in read_log(out) if r["type"] == "train"][-4:] == [3, 4, 5, 6]
    assert (out / "metrics.json").is_file()


# ------------------------------------------------------------------ 5. SIGTERM / SIGINT
def _signalled_run(tmp_path: Path, out: Path, args: list[str], signals: list[int], **env: str) -> tuple[subprocess.Popen, str]:
    """Start a run, wait until it has logged 3 train steps, then send `signals`; each one after
    the run has reported handling the previous one (signals sent back to back would merge into
    one: Python runs a handler once for several deliveries of the same signal)."""
    err_path = tmp_path / f"{out.name}.err"
    stdout, stderr = (tmp_path / f"{out.name}.out").open("w"), err_path.open("w")
    proc = subprocess.Popen(_llmtune(*args), cwd=ROOT, env=_env(tmp_path, **env), stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 240
        log = out / "train_log.jsonl"
        while True:
            assert proc.poll() is None, f"the run ended before it was signalled: {(tmp_path / f'{out.name}.err').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no 3 train records within 240 s"
            if log.is_file() and sum('"type": "train"' in line for line in log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.02)
        for i, sig in enumerate(signals):
            if i:
                handled = f"{signal.Signals(signals[i - 1]).name}: finishing this step"
                while handled not in err_path.read_text():
                    assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()[-3000:]
                    time.sleep(0.01)
            proc.send_signal(sig)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stdout.close(), stderr.close()
    return proc, (tmp_path / f"{out.name}.err").read_text()


def _stopped_at(stderr: str, out: Path) -> int:
    match = re.search(r"stopped by signal at step (\d+); checkpoint written to (\S+)\.", stderr)
    assert match, stderr[-3000:]
    step = int(match.group(1))
    assert match.group(2) == str(out / "checkpoints" / f"step-{step}")
    return step


def test_sigterm_checkpoints_exits_143_and_resume_continues_exactly(tmp_path):
    from llmtune.engine import checkpoint

    steps = 40
    out = tmp_path / "run"
    # Dropout on: the resumed steps match only if the checkpoint also restored the torch RNG.
    args = _args(out, steps, "trainer.save_every=null", batch=4)
    proc, stderr = _signalled_run(tmp_path, out, args, [signal.SIGTERM])
    assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
    stop = _stopped_at(stderr, out)
    assert 3 <= stop < steps
    assert "Continue with trainer.resume=auto" in stderr
    assert _checkpoints(out) == [f"step-{stop}"]
    assert checkpoint.is_loadable(out / "checkpoints" / f"step-{stop}")
    assert json.loads((out / "checkpoints" / f"step-{stop}" / "state.json").read_text())["step"] == stop
    assert max(_losses(out)) == stop

    resumed = run_cli(*args, "trainer.resume=auto")
    assert resumed.code == 0, resumed.err[-3000:]
    assert f"resumed from {out / 'checkpoints' / f'step-{stop}'} at step {stop}" in resumed.err

    reference_dir = tmp_path / "reference"
    reference = run_cli(*_args(reference_dir, steps, "trainer.save_every=null", batch=4))
    assert reference.code == 0, reference.err[-3000:]
    expected, got = _losses(reference_dir), _losses(out)
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(stop + 1, steps + 1):
        assert got[step] == expected[step], (step, got[step], expected[step])


def test_second_sigterm_does_not_start_a_second_save(tmp_path):
    from llmtune.engine import checkpoint

    out = tmp_path / "run"
    args = _args(out, 400, "trainer.save_every=null", batch=4)
    # The checkpoint save is slowed by 2 s (in the test's sitecustomize), so the second SIGTERM,
    # sent once the first is handled, lands while the run is still stopping.
    proc, stderr = _signalled_run(tmp_path, out, args, [signal.SIGTERM, signal.SIGTERM], LLMTUNE_TEST_SLOW_SAVE="2")
    assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
    stop = _stopped_at(stderr, out)
    assert "SIGTERM again: already stopping" in stderr
    assert _checkpoints(out) == [f"step-{stop}"]  # exactly one checkpoint, no .tmp left
    assert checkpoint.is_loadable(out / "checkpoints" / f"step-{stop}")
    assert stderr.count("stopped by signal") == 1


def test_sigint_checkpoints_and_exits_130(tmp_path):
    from llmtune.engine import checkpoint

    out = tmp_path / "run"
    args = _args(out, 400, "trainer.save_every=null", batch=4)
    proc, stderr = _signalled_run(tmp_path, out, args, [signal.SIGINT])
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    stop = _stopped_at(stderr, out)
    assert "trainer.resume=auto" in stderr
    assert "KeyboardInterrupt" not in stderr
    assert _checkpoints(out) == [f"step-{stop}"]
    assert checkpoint.is_loadable(out / "checkpoints" / f"step-{stop}")


# ------------------------------------------------------------------ 13. one rank fails
def test_one_failing_rank_ends_the_whole_job_quickly(tmp_path):
    out = tmp_path / "run"
    args = _args(out, 4, batch=2)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "llmtune", *args]
    started = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=ROOT, env=_env(tmp_path, LLMTUNE_TEST_FAIL_RANK_STEP="1:2"),
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the job hung: still running after 120 s\n{(exc.stderr or b'')[-3000:]!r}")
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "injected failure in rank 1 at step 2" in output
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end after a rank failed"
    assert not (out / "checkpoints" / "step-2").exists()
