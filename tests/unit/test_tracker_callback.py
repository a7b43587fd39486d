"""The tracker callback (llmtune.engine.trackers) against a stand-in Accelerator: what it hands
to Accelerate's tracking API, and that only the main process logs."""

from __future__ import annotations

from types import SimpleNamespace

from omegaconf import OmegaConf

from llmtune.engine.checkpoint import TrainState
from llmtune.engine.trackers import TrackerCallback, flatten, run_name


class FakeAccelerator:
    def __init__(self):
        self.calls = []
        self.project_configuration = SimpleNamespace(logging_dir=None)

    def init_trackers(self, project, config=None, init_kwargs=None):
        self.calls.append(("init", project, config, init_kwargs))

    def log(self, values, step=None):
        self.calls.append(("log", values, step))


def _callback(tmp_path, is_main, trackers):
    (tmp_path / "config.yaml").write_text("trainer:\n  batch_size: 4\n  steps: [1, 2]\nseed: 7\nmodel:\n  tokenizer: null\n")
    cb = TrackerCallback(tmp_path, is_main, OmegaConf.create(trackers), project="proj")
    accelerator = FakeAccelerator()
    cb.on_setup(SimpleNamespace(accelerator=accelerator))
    return cb, accelerator


def _drive(cb):
    state = TrainState(step=3)
    cb.on_train_start(state, 10)
    cb.on_log(state, {"type": "train", "step": 3, "total_steps": 10, "loss": 1.5, "grad_norm": None, "lr": 1e-4})
    cb.on_evaluate(state, {"type": "eval", "split": "validation", "step": 3, "f1": 0.5})
    cb.on_train_end(state)
    cb.on_metrics({"task": "ner", "validation": {"f1": 0.5}, "train": {"steps": 3}, "greater_is_better": True})


def test_the_main_process_hands_everything_to_accelerate(tmp_path):
    trackers = {"wandb": {"run_name_arg": "name", "init": {"mode": "offline"}}, "tensorboard": {"logging_dir": str(tmp_path / "tb"), "init": {}}}
    cb, acc = _callback(tmp_path, True, trackers)
    _drive(cb)
    init, train, evaluation, final = acc.calls
    assert init == ("init", "proj", {"trainer.batch_size": 4, "trainer.steps": "[1, 2]", "seed": 7, "model.tokenizer": "null"},
                    {"wandb": {"mode": "offline", "name": tmp_path.name}, "tensorboard": {}})
    assert acc.project_configuration.logging_dir == str(tmp_path / "tb")
    assert train == ("log", {"train/loss": 1.5, "train/lr": 1e-4}, 3)  # None and bookkeeping keys left out
    assert evaluation == ("log", {"validation/f1": 0.5}, 3)
    assert final == ("log", {"final/validation/f1": 0.5, "final/train/steps": 3}, 3)  # numbers only, no bools


def test_other_processes_log_nothing(tmp_path):
    cb, acc = _callback(tmp_path, False, {"mlflow": {"env": {"LLMTUNE_TEST_UNSET": "x"}}})
    _drive(cb)
    assert acc.calls == []
    import os

    assert "LLMTUNE_TEST_UNSET" not in os.environ


def test_no_tracker_logs_nothing(tmp_path):
    cb, acc = _callback(tmp_path, True, {})
    _drive(cb)
    assert acc.calls == []


def test_flatten_and_run_name_outside_a_sweep(tmp_path):
    assert flatten({"a": {"b": 1, "c": [1]}, "d": None}) == {"a.b": 1, "a.c": "[1]", "d": "null"}
    assert run_name(tmp_path / "my-run") == "my-run"
