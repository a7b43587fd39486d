"""Training curves as PNG files, from train_log.jsonl alone (so any finished, stopped or
running run can be plotted, and several runs overlaid).

One run's `plots/` (written at the end of training by the `plots` callback) and the overlays
of `llmtune plot` hold the same files:

    loss.png          training loss against steps; the validation loss dashed, when evaluated
    lr.png            the learning rate against steps
    eval_<name>.png   one per validation metric against steps (a metric's `<name>_stderr`,
                      when the task reports one, is the shaded band around it)

matplotlib is imported lazily with the Agg backend: no display is needed, and importing this
module costs nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

LOG = "train_log.jsonl"
STDERR = "_stderr"


@dataclass
class Curves:
    """One run's curves: name -> (steps, values), steps increasing."""

    name: str
    train: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    eval: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)


def read_curves(run_dir: Path, name: str | None = None) -> Curves:
    """The curves in `run_dir`/train_log.jsonl. A resumed run logs again the steps after its
    checkpoint: the later record of a step wins. A torn last line (a killed run) is skipped."""
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for line in (Path(run_dir) / LOG).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        if record.get("type") == "train":
            train[record["step"]] = record
        elif record.get("type") == "eval" and record.get("split", "validation") == "validation":
            evals[record["step"]] = record
    curves = Curves(name or Path(run_dir).name)
    curves.train = _series(train, ("loss", "lr"))
    curves.eval = _series(evals, None)
    return curves


def _series(by_step: dict[int, dict], keys: tuple[str, ...] | None) -> dict[str, tuple[list[int], list[float]]]:
    """{key: (steps, values)} over the records in step order; keys=None: every numeric field."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for step in sorted(by_step):
        for key, value in by_step[step].items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key in ("step", "total_steps", "epoch") or not numeric or (keys is not None and key not in keys):
                continue
            steps, values = out.setdefault(key, ([], []))
            steps.append(step)
            values.append(float(value))
    return out


def eval_metrics(runs: list[Curves]) -> list[str]:
    """The validation metrics with a plot of their own: all but the loss (on loss.png) and the
    standard errors (bands), in the order the first run logged them."""
    names: list[str] = []
    for run in runs:
        names += [k for k in run.eval if k not in names and k != "loss" and not k.endswith(STDERR)]
    return names


def write_plots(runs: list[Curves], out_dir: Path, metrics: list[str] | None = None) -> list[Path]:
    """loss.png, lr.png and eval_<metric>.png for `runs` (one line each, a legend when there are
    several) into `out_dir`; `metrics` limits the eval plots. Returns the files written."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if any("loss" in r.train or "loss" in r.eval for r in runs):
        written.append(_draw(plt, runs, out_dir / "loss.png", "loss", _loss_lines))
    if any("lr" in r.train for r in runs):
        written.append(_draw(plt, runs, out_dir / "lr.png", "learning rate", lambda ax, run, color, n: _line(ax, run.train, "lr", color, run.name)))
    for metric in metrics if metrics is not None else eval_metrics(runs):
        path = out_dir / f"eval_{_safe(metric)}.png"
        written.append(_draw(plt, runs, path, f"validation {metric}", lambda ax, run, color, n, m=metric: _metric_lines(ax, run, m, color)))
    return written


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never a window, also when a display exists
    import matplotlib.pyplot as plt

    return plt


def _draw(plt, runs: list[Curves], path: Path, title: str, lines) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    try:
        for i, run in enumerate(runs):
            lines(ax, run, f"C{i % 10}", len(runs))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)  # steps: no 2.5 on a short run
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and (len(runs) > 1 or title == "loss"):
            ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _line(ax, series: dict, key: str, color: str, label: str, **style) -> None:
    if key in series:
        steps, values = series[key]
        ax.plot(steps, values, color=color, label=label, marker="o" if len(steps) < 30 else None, markersize=3, **style)


def _loss_lines(ax, run: Curves, color: str, n_runs: int) -> None:
    prefix = f"{run.name}: " if n_runs > 1 else ""
    _line(ax, run.train, "loss", color, f"{prefix}train")
    _line(ax, run.eval, "loss", color, f"{prefix}validation", linestyle="--")


def _metric_lines(ax, run: Curves, metric: str, color: str) -> None:
    _line(ax, run.eval, metric, color, run.name)
    band = run.eval.get(metric + STDERR)
    if metric in run.eval and band and band[0] == run.eval[metric][0]:
        steps, values = run.eval[metric]
        ax.fill_between(steps, [v - e for v, e in zip(values, band[1], strict=True)], [v + e for v, e in zip(values, band[1], strict=True)], color=color, alpha=0.15)


def _safe(name: str) -> str:
    """A metric name as a file name part (metric names are task-chosen strings)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
