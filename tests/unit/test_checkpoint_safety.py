"""A checkpoint from someone else cannot run code: every .pt file of a checkpoint is read with
torch.load(weights_only=True), and a file that holds anything but tensors and plain containers
is refused with one line (exit 2) before anything in it runs, by trainer.resume=auto too."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ner_args, run_cli
from llmtune.engine import checkpoint
from llmtune.engine.checkpoint import TrainState

PT_FILES = ("optimizer.pt", "scheduler.pt", "rng-rank0.pt")


class _Payload:
    """Unpickling this runs a shell command that creates `marker`: what a hostile file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _torch_save(payload, file: Path) -> None:  # a zip archive, as torch.save writes (the usual .pt)
    torch.save({"state": {}, "param_groups": [], "extra": payload}, file)


def _raw_pickle(payload, file: Path) -> None:  # a bare pickle, which torch.load also accepts
    file.write_bytes(pickle.dumps({"extra": payload}, protocol=2))


def _tamper(ckpt: Path, name: str, write, marker: Path, fix_size: bool = True) -> None:
    """Replace ckpt/name by a hostile pickle; with fix_size, state.json records its new size,
    so the cheap size check passes and only the load itself can catch it."""
    write(_Payload(marker), ckpt / name)
    if fix_size:
        state = json.loads((ckpt / "state.json").read_text())
        state["files"][name] = (ckpt / name).stat().st_size
        (ckpt / "state.json").write_text(json.dumps(state, indent=1))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real tiny run, 4 steps, with checkpoints step-2 and step-4 (never modified: copy it)."""
    out = tmp_path_factory.mktemp("safety") / "run"
    result = run_cli(*ner_args(out))
    assert result.code == 0, result.err[-3000:]
    assert checkpoint.list_checkpoints(out / "checkpoints") == [out / "checkpoints" / "step-2", out / "checkpoints" / "step-4"]
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


@pytest.mark.parametrize("write", [_torch_save, _raw_pickle])
def test_the_payload_runs_code_when_loaded_unsafely(write, tmp_path):
    """The control: without weights_only the hostile file does create its marker (a bare
    pickle before torch finds it is no checkpoint), so the tests below that find no marker
    show the safe load at work, not a broken payload."""
    marker = tmp_path / "marker"
    write(_Payload(marker), tmp_path / "hostile.pt")
    with contextlib.suppress(RuntimeError):
        torch.load(tmp_path / "hostile.pt", weights_only=False)
    assert marker.exists()


def test_a_real_checkpoint_resumes_with_safe_loads_only(run, monkeypatch):
    real_load, loads = torch.load, []

    def spy(file, *args, **kwargs):
        if Path(file).parent.parent == run / "checkpoints":
            loads.append((Path(file).name, kwargs.get("weights_only")))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    result = run_cli(*ner_args(run), f"trainer.resume={run / 'checkpoints' / 'step-2'}")
    assert result.code == 0, result.err[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'step-2'} at step 2" in result.err
    assert sorted(loads) == sorted((name, True) for name in PT_FILES)


@pytest.mark.parametrize(("name", "write"), [
    ("optimizer.pt", _torch_save),
    ("scheduler.pt", _torch_save),
    ("rng-rank0.pt", _torch_save),
    ("rng-rank0.pt", _raw_pickle),  # the one file with an allow-list (older numpy RNG states)
])
def test_a_tampered_file_of_the_right_size_is_refused_by_resume_auto(run, name, write, tmp_path):
    """The newest checkpoint passes the size check, so resume=auto picks it; the safe load
    refuses it loudly instead of falling back to step-2, runs nothing and changes nothing."""
    ckpt, marker = run / "checkpoints" / "step-4", tmp_path / "marker"
    _tamper(ckpt, name, write, marker)
    assert checkpoint.is_loadable(ckpt)
    before = _snapshot(run)

    result = run_cli(*ner_args(run), "trainer.resume=auto")

    assert result.code == 2, result.text[-3000:]
    errors = [line for line in result.err.splitlines() if line.startswith("llmtune: error")]
    assert errors == [
        f"llmtune: error: trainer.resume: {ckpt / name} holds objects a safe load refuses (posix.system); "
        "it was not written by llmtune or was tampered with — resume from a checkpoint you trust."
    ], result.err[-3000:]
    assert "Traceback" not in result.text and "resumed from" not in result.err and "skipping" not in result.err
    assert not marker.exists()
    assert _snapshot(run) == before


def test_a_tampered_file_of_the_wrong_size_is_damage_skipped_with_a_warning_unread(run, tmp_path):
    """Without the size fixed up the file is damage: resume=auto says so and takes step-2,
    and never unpickles the file."""
    ckpt, marker = run / "checkpoints" / "step-4", tmp_path / "marker"
    _tamper(ckpt, "optimizer.pt", _torch_save, marker, fix_size=False)

    result = run_cli(*ner_args(run), "trainer.resume=auto")

    assert result.code == 0, result.err[-3000:]
    assert f"skipping damaged checkpoint {ckpt}" in result.err
    assert f"resumed from {run / 'checkpoints' / 'step-2'} at step 2" in result.err
    assert not marker.exists()


def _accelerator():
    return SimpleNamespace(is_main_process=True, process_index=0, wait_for_everyone=lambda: None, unwrap_model=lambda m: m)


def _objects():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def test_rng_states_are_stored_plain_and_older_numpy_tuples_still_load(tmp_path):
    """rng-rank0.pt names no global a safe load would need allowed; one written in numpy's own
    form (a tuple holding an ndarray, as before) still resumes, numpy's stream restored."""
    path = checkpoint.save(tmp_path, TrainState(step=1), *_objects(), _accelerator(), keep=5, protect=None)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path / "rng-rank0.pt") == []

    np.random.seed(3)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}, path / "rng-rank0.pt")
    expected = np.random.random(4)
    np.random.seed(4)
    checkpoint.load(path, *_objects(), _accelerator())
    assert np.array_equal(np.random.random(4), expected)


def test_config_types_in_optimizer_hyperparameters_are_saved_plain(tmp_path):
    """An optimizer keeps betas as it was given them (bitsandbytes: Hydra's ListConfig); saved
    as is, a safe load would refuse the checkpoint on resume."""
    from omegaconf import OmegaConf

    model, optimizer, scheduler = _objects()
    optimizer.param_groups[0]["betas"] = OmegaConf.create([0.8, 0.9])
    path = checkpoint.save(tmp_path, TrainState(step=1), model, optimizer, scheduler, _accelerator(), keep=5, protect=None)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path / "optimizer.pt") == []
    fresh_model, fresh_optimizer, fresh_scheduler = _objects()
    checkpoint.load(path, fresh_model, fresh_optimizer, fresh_scheduler, _accelerator())
    assert fresh_optimizer.param_groups[0]["betas"] == [0.8, 0.9]
