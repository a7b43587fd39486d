"""The progress bar's schedule (next evaluation, next checkpoint, best so far) and the reading
of train_log.jsonl for plots."""

from __future__ import annotations

import json
from types import SimpleNamespace

from llmtune.engine.callbacks import ProgressCallback, next_multiple
from llmtune.engine.checkpoint import TrainState
from llmtune.ui.console import schedule_text
from llmtune.ui.plots import eval_metrics, read_curves


def test_schedule_text():
    assert schedule_text(100, 50, "f1", 0.81234, 40) == "eval@100  save@50  best f1 0.8123@40"
    assert schedule_text(None, None, "f1", None, None) == ""  # nothing evaluated yet, nothing due


class _Bar:
    def schedule(self, *args):
        self.shown = schedule_text(*args)


def _progress(eval_every, save_every, total, has_validation=True):
    cb = ProgressCallback(run_dir=".", is_main=False)
    tcfg = SimpleNamespace(eval_every=eval_every, save_every=save_every)
    cb.on_setup(SimpleNamespace(tcfg=tcfg, task=SimpleNamespace(main_metric="f1"), datasets={"validation": []} if has_validation else {}))
    cb.total, cb.bar = total, _Bar()
    return cb


def test_progress_follows_the_loop_schedule():
    cb = _progress(eval_every=50, save_every=30, total=120)
    cb._schedule(TrainState(step=10))
    assert cb.bar.shown == "eval@50  save@30"
    cb._schedule(TrainState(step=100, best_metric=0.5, best_step=50))
    assert cb.bar.shown == "eval@120  save@120  best f1 0.5000@50"  # the last step always evaluates
    cb._schedule(TrainState(step=120))
    assert cb.bar.shown == ""


def test_progress_without_validation_saves_only_every_save_every():
    cb = _progress(eval_every=50, save_every=None, total=120, has_validation=False)
    cb._schedule(TrainState(step=10))
    assert cb.bar.shown == ""


def test_next_multiple():
    assert next_multiple(0, 5, 12) == 5 and next_multiple(5, 5, 12) == 10
    assert next_multiple(10, 5, 12) is None and next_multiple(3, None, 12) is None


def test_read_curves_resumed_and_torn_log(tmp_path):
    records = [
        {"type": "train", "step": 1, "loss": 3.0, "lr": 1.0},
        {"type": "train", "step": 2, "loss": 2.0, "lr": 1.0},
        {"type": "eval", "split": "validation", "step": 2, "f1": 0.1, "f1_stderr": 0.05, "loss": 2.5},
        {"type": "train", "step": 2, "loss": 1.5, "lr": 0.5},  # resumed from step 1: step 2 again
    ]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"type": "train", "st'  # killed mid-line
    (tmp_path / "train_log.jsonl").write_text(text)
    curves = read_curves(tmp_path)
    assert curves.name == tmp_path.name
    assert curves.train["loss"] == ([1, 2], [3.0, 1.5])
    assert curves.eval["f1"] == ([2], [0.1])
    assert eval_metrics([curves]) == ["f1"]  # loss goes on loss.png, the stderr is f1's band
