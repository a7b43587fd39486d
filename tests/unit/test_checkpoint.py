"""Checkpoints: atomic layout, rotation, damaged checkpoints, resolving trainer.resume, load."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from llmtune.engine import checkpoint
from llmtune.engine.checkpoint import TrainState
from llmtune.errors import UserError


class _Accelerator(SimpleNamespace):
    """The few Accelerator members checkpointing uses, for one process."""

    def __init__(self):
        super().__init__(is_main_process=True, process_index=0)

    def wait_for_everyone(self):
        pass

    def unwrap_model(self, model):
        return model


def _objects(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)  # a frozen parameter is not saved
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int = 2):
    for _ in range(steps):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def _save(directory, step, objects, keep=10, protect=None, **state):
    return checkpoint.save(directory, TrainState(step=step, **state), *objects, _Accelerator(), keep=keep, protect=protect)


def test_save_layout(tmp_path):
    objects = _objects()
    path = _save(tmp_path, 3, objects, epoch=1, micro_in_epoch=5)
    assert path == tmp_path / "step-3"
    names = {p.name for p in path.iterdir()}
    assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json", "rng-rank0.pt"} <= names
    state = json.loads((path / "state.json").read_text())
    assert (state["step"], state["epoch"], state["micro_in_epoch"]) == (3, 1, 5)
    assert [p.name for p in tmp_path.iterdir()] == ["step-3"]  # no temporary folder left behind
    from safetensors.torch import load_file

    saved = load_file(path / "trainable.safetensors")
    assert set(saved) == {"0.bias", "1.weight", "1.bias"}  # only what trains
    assert checkpoint.is_loadable(path)


def test_rotation_never_deletes_the_newest_or_the_best(tmp_path):
    objects = _objects()
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, objects, keep=2, protect=2)
        names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
        assert f"step-{step}" in names
        assert step < 2 or "step-2" in names
        assert len(names) <= 3
    _save(tmp_path, 6, objects, keep=1, protect=None)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-6"]
    for step in (7, 8, 9):
        _save(tmp_path, step, objects, keep=3, protect=None)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-7", "step-8", "step-9"]


def test_rotation_keeps_the_newest_n_plus_the_best(tmp_path):
    objects = _objects()
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, objects, keep=2, protect=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-2", "step-4", "step-5"]


def test_list_checkpoints_sorts_numerically_and_ignores_others(tmp_path):
    objects = _objects()
    for step in (10, 9, 100):
        _save(tmp_path, step, objects)
    (tmp_path / ".tmp-step-101").mkdir()
    (tmp_path / "step-x").mkdir()
    (tmp_path / "notes").mkdir()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-9", "step-10", "step-100"]
    assert checkpoint.list_checkpoints(tmp_path / "missing") == []


def test_latest_skips_a_damaged_checkpoint(tmp_path):
    objects = _objects()
    _save(tmp_path, 2, objects)
    _save(tmp_path, 4, objects)
    (tmp_path / "step-4" / "state.json").write_text('{"step": 4')  # cut short
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "step-2"
    (tmp_path / "step-2" / "optimizer.pt").unlink()
    assert checkpoint.latest_checkpoint(tmp_path) is None


def test_resolve_resume(tmp_path):
    run = tmp_path / "run"
    assert checkpoint.resolve_resume(None, run) is None
    assert checkpoint.resolve_resume("auto", run) is None  # nothing to resume: a fresh start
    objects = _objects()
    _save(run / "checkpoints", 2, objects)
    _save(run / "checkpoints", 4, objects)
    assert checkpoint.resolve_resume("auto", run) == run / "checkpoints" / "step-4"
    assert checkpoint.resolve_resume(str(run), tmp_path / "other") == run / "checkpoints" / "step-4"
    assert checkpoint.resolve_resume(str(run / "checkpoints"), tmp_path / "other") == run / "checkpoints" / "step-4"
    assert checkpoint.resolve_resume(str(run / "checkpoints" / "step-2"), tmp_path / "other") == run / "checkpoints" / "step-2"
    (run / "checkpoints" / "step-2" / "trainable.safetensors").unlink()
    with pytest.raises(UserError, match="incomplete or corrupt"):
        checkpoint.resolve_resume(str(run / "checkpoints" / "step-2"), tmp_path / "other")
    with pytest.raises(UserError, match="no complete checkpoint"):
        checkpoint.resolve_resume(str(tmp_path / "empty"), tmp_path / "other")


def test_load_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model, optimizer, scheduler = _objects(0)
    _train(model, optimizer, scheduler)
    random.seed(5)
    torch.manual_seed(5)
    path = _save(tmp_path, 2, (model, optimizer, scheduler), epoch=0, micro_in_epoch=2)
    python_state = random.getstate()
    after_python = random.random()
    random.setstate(python_state)
    with torch.random.fork_rng(devices=[]):
        after_torch = torch.rand(3)
    _train(model, optimizer, scheduler)  # the reference continues
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}

    fresh, fresh_opt, fresh_sched = _objects(1)
    fresh[0].weight.data.copy_(model[0].weight.data)  # frozen weights are rebuilt from the config
    random.seed(99)
    torch.manual_seed(99)
    state = checkpoint.load(path, fresh, fresh_opt, fresh_sched, _Accelerator())
    assert (state.step, state.epoch, state.micro_in_epoch) == (2, 0, 2)
    assert random.random() == after_python
    assert torch.equal(torch.rand(3), after_torch)
    assert fresh_sched.last_epoch == 2
    assert fresh_opt.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()

    random.seed(99)
    torch.manual_seed(99)
    checkpoint.load(path, fresh, fresh_opt, fresh_sched, _Accelerator())  # RNG back to the save
    _train(fresh, fresh_opt, fresh_sched)
    for name, p in fresh.named_parameters():
        assert torch.equal(p, reference[name]), name


def test_load_refuses_other_trainable_parameters(tmp_path):
    model, optimizer, scheduler = _objects()
    path = _save(tmp_path, 1, (model, optimizer, scheduler))
    other, other_opt, other_sched = _objects()
    other[0].weight.requires_grad_(True)
    with pytest.raises(UserError, match="trainable parameters"):
        checkpoint.load(path, other, other_opt, other_sched, _Accelerator())
