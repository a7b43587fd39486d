"""Rich console: logging set-up, the training progress bar, and tables."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)
log = logging.getLogger("llmtune")


def setup_logging(is_main: bool, log_file: Path | None = None) -> None:
    """Rich log lines on the main process (warnings only elsewhere), and a plain copy in the run
    directory so the log survives the terminal."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    if console.is_terminal:
        log.addHandler(RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False))
    else:  # CI logs and pipes: one plain line per record, no wrapping at 80 columns
        plain = logging.StreamHandler(sys.stderr)
        plain.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(plain)
    if log_file is not None and is_main:
        log.addHandler(run_log_handler(log_file))
    # Library chatter (missing-weights reports, hub retries) says nothing llmtune does not.
    for name in ("transformers", "datasets", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    # transformers sets its loggers' level when it first configures them, after the lines above
    # may have run: its own setter sticks (else a LoRA base's "classifier MISSING" load report,
    # a head the adapter then supplies, reads like a broken model).
    transformers.utils.logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_error()
    # peft asks the model for a property transformers 5 deprecates; not the user's concern.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def run_log_handler(log_file: Path) -> logging.Handler:
    """The plain copy of the log in the run directory (run.log), appended to."""
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


class TrainProgress:
    """Progress bar with step, loss, lr, tokens/s, ETA, the next evaluation and checkpoint
    steps and the best main metric so far. Refreshed every step (cheap: no
    device sync); loss and speed change only at log steps. Off the terminal it stays silent
    and the loop's log lines carry the same numbers."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled and console.is_terminal
        self._progress = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[plan]}"),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=start, loss="-", lr="-", speed="-", plan="")
            self._progress.start()

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def show(self, record: dict) -> None:
        if self._progress is not None:
            self._progress.update(self._task, loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", speed=f"{record['tokens_per_s']:,.0f}")

    def schedule(self, next_eval: int | None, next_save: int | None, metric: str | None, best: float | None, best_step: int | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, plan=schedule_text(next_eval, next_save, metric, best, best_step))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def schedule_text(next_eval: int | None, next_save: int | None, metric: str | None, best: float | None, best_step: int | None) -> str:
    """What comes next and the best so far, for the progress bar: "eval@100 save@100 best f1
    0.8123@50". A part with nothing to say is left out."""
    parts = []
    if next_eval is not None:
        parts.append(f"eval@{next_eval}")
    if next_save is not None:
        parts.append(f"save@{next_save}")
    if metric and best is not None:
        parts.append(f"best {metric} {best:.4f}" + (f"@{best_step}" if best_step is not None else ""))
    return "  ".join(parts)


def metrics_table(title: str, metrics: dict[str, dict[str, float]], main_metric: str) -> Table:
    """One column per split (validation, test), one row per metric; the main metric first."""
    splits = [s for s in metrics if metrics[s]]
    names: list[str] = []
    for s in splits:
        names += [k for k in metrics[s] if k not in names]
    names.sort(key=lambda k: k != main_metric)
    table = Table(title=title)
    table.add_column("metric")
    for s in splits:
        table.add_column(s, justify="right")
    for name in names:
        label = f"{name} (main)" if name == main_metric else name
        table.add_row(label, *[_fmt(metrics[s].get(name)) for s in splits])
    return table


def rows_table(title: str, header: Sequence[str], rows: Iterable[Sequence]) -> Table:
    table = Table(title=title)
    for i, h in enumerate(header):
        # The first column names the row (a recipe, a method): copied whole, never wrapped.
        table.add_column(str(h), no_wrap=i == 0)
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    return table


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_table(table: Table) -> None:
    Console(file=sys.stdout).print(table)
