"""Things that happen at step intervals, kept out of the loop: logging lines to
train_log.jsonl, the progress bar, early stopping.

Callbacks other than early stopping come from the `callbacks` config group (conf/callbacks/):
a tracker or a plot is one Callback class plus one entry there. Each is built with
`run_dir` (the run's directory) and `is_main` (whether this process is the one that writes)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from llmtune.engine.checkpoint import TrainState

log = logging.getLogger("llmtune")


class Callback:
    """Hooks run on every process; a callback that writes files checks it is the main one.
    `record` is the train_log.jsonl object of that log step or evaluation."""

    def on_train_start(self, state: TrainState, total_steps: int) -> None: ...
    def on_step(self, state: TrainState) -> None: ...
    def on_log(self, state: TrainState, record: dict) -> None: ...
    def on_evaluate(self, state: TrainState, record: dict) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...


class JsonlLogger(Callback):
    """One JSON object per log step and per evaluation, flushed as written (a killed run keeps
    its log). Only the main process writes."""

    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.path, self.enabled = Path(run_dir) / "train_log.jsonl", is_main

    def _write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_log(self, state, record):
        if not self.enabled:
            return
        self._write(record)
        log.info(
            "step %d/%s  loss %.4f  lr %.2e  grad_norm %s  %s tok/s",
            record["step"], record.get("total_steps", "?"), record["loss"], record["lr"],
            f"{record['grad_norm']:.3f}" if record.get("grad_norm") is not None else "-", f"{record['tokens_per_s']:,.0f}",
        )

    def on_evaluate(self, state, record):
        if not self.enabled:
            return
        self._write(record)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float))
        log.info("eval at step %d: %s", record["step"], shown)


class ProgressCallback(Callback):
    """The progress bar on the console (main process only)."""

    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.enabled = is_main
        self.bar = None

    def on_train_start(self, state, total_steps):
        from llmtune.ui.console import TrainProgress

        self.bar = TrainProgress(total_steps, state.step, self.enabled)

    def on_step(self, state):
        self.bar.advance(state.step)

    def on_log(self, state, record):
        self.bar.show(record)

    def on_train_end(self, state):
        if self.bar is not None:
            self.bar.close()


class EarlyStopping(Callback):
    """Stop after `patience` evaluations in a row without a new best main metric."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.should_stop = False

    def on_evaluate(self, state, record):
        if self.patience and state.evals_without_improvement >= self.patience:
            log.info("early stopping: no improvement in %d evaluations (best at step %s)", self.patience, state.best_step)
            self.should_stop = True
