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
    `record` is the train_log.jsonl object of that log step or evaluation. `on_setup` comes
    first, once, with the Trainer (llmtune.engine.loop): what a callback needs to know of the
    run's settings (trainer.tcfg: eval_every, save_every; trainer.task: main_metric)."""

    def on_setup(self, trainer) -> None: ...
    def on_train_start(self, state: TrainState, total_steps: int) -> None: ...
    def on_step(self, state: TrainState) -> None: ...
    def on_log(self, state: TrainState, record: dict) -> None: ...
    def on_evaluate(self, state: TrainState, record: dict) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...
    def on_metrics(self, metrics: dict) -> None: ...   # metrics.json's content, once it is written (main process)


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
        self.eval_every = self.save_every = self.main_metric = None
        self.has_validation, self.total = True, 0

    def on_setup(self, trainer):
        t = trainer.tcfg
        self.eval_every, self.save_every, self.main_metric = t.eval_every, t.save_every, trainer.task.main_metric
        self.has_validation = "validation" in trainer.datasets

    def on_train_start(self, state, total_steps):
        from llmtune.ui.console import TrainProgress

        self.total = total_steps
        self.bar = TrainProgress(total_steps, state.step, self.enabled)
        self._schedule(state)

    def on_step(self, state):
        self.bar.advance(state.step)
        self._schedule(state)

    def on_log(self, state, record):
        self.bar.show(record)

    def on_evaluate(self, state, record):
        self._schedule(state)

    def _schedule(self, state):
        """The loop's own rule (loop._after_step): evaluate every eval_every steps and at the
        last step; checkpoint at each evaluation and every save_every steps."""
        step, total = state.step, self.total
        next_eval = None
        if self.has_validation:
            next_eval = min(filter(None, (next_multiple(step, self.eval_every, total), total if step < total else None)), default=None)
        next_save = min(filter(None, (next_eval, next_multiple(step, self.save_every, total))), default=None)
        self.bar.schedule(next_eval, next_save, self.main_metric, state.best_metric, state.best_step)

    def on_train_end(self, state):
        if self.bar is not None:
            self.bar.close()


def next_multiple(step: int, every: int | None, total: int) -> int | None:
    """The first multiple of `every` after `step`, if training gets there (None otherwise)."""
    upcoming = (step // every + 1) * every if every else None
    return upcoming if upcoming is not None and upcoming <= total else None


class PlotsCallback(Callback):
    """plots/*.png in the run directory at the end of training: loss, learning rate and each
    validation metric against steps (llmtune.ui.plots). Main process only. A plot that cannot
    be drawn is a warning: the trained model is still to be saved."""

    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.run_dir, self.enabled = Path(run_dir), is_main

    def on_train_end(self, state):
        if not self.enabled or not (self.run_dir / "train_log.jsonl").is_file():
            return
        from llmtune.ui.plots import read_curves, write_plots

        try:
            written = write_plots([read_curves(self.run_dir)], self.run_dir / "plots")
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("could not write the plots to %s: %s", self.run_dir / "plots", exc)
            return
        log.info("plots: %s", ", ".join(p.name for p in written))


class EarlyStopping(Callback):
    """Stop after `patience` evaluations in a row without a new best main metric."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.should_stop = False

    def on_evaluate(self, state, record):
        if self.patience and state.evals_without_improvement >= self.patience:
            log.info("early stopping: no improvement in %d evaluations (best at step %s)", self.patience, state.best_step)
            self.should_stop = True
