"""The table of `llmtune compare`: runs (their metrics.json and config.yaml) grouped into one row
per method, and that table as rich, CSV, Markdown and a PNG (main metric against trainable %).
llmtune.compare decides what to run and runs it; this module only reads and renders."""

from __future__ import annotations

import csv
import io
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.errors import UserError

# Settings that may differ between runs of one row (where a run lives, how it was resumed,
# what it logged to): never reported as a difference.
IGNORED_SETTINGS = ("output_dir", "trainer.resume", "trainer.overwrite_output_dir", "data.cache_dir", "callbacks", "tracker")


@dataclass
class RunResult:
    """One run as the table reads it."""

    method: str
    seed: int | None
    path: Path
    metrics: dict | None = None
    config: dict | None = None
    error: str = ""


def differing_settings(a: dict, b: dict) -> list[str]:
    """The dotted keys whose values differ between two resolved configs, bar IGNORED_SETTINGS."""
    fa, fb = flat_settings(a), flat_settings(b)
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if not _ignored(k) and fa.get(k) != fb.get(k)]


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED_SETTINGS)


def flat_settings(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict = {}
    for key, value in tree.items():
        out.update(flat_settings(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


# --------------------------------------------------------------------------- the table
@dataclass
class Row:
    """One method: its runs' numbers, aggregated over seeds."""

    method: str
    runs: int
    ok: int
    metric: tuple[float | None, float | None]   # mean, std over seeds
    test: tuple[float | None, float | None]
    trainable: int | None
    total: int | None
    memory_mb: float | None
    train_s: float | None
    tokens_per_s: float | None
    errors: list[str] = field(default_factory=list)
    model: str = ""             # the model its runs used (prompting rows may prompt another one)

    @property
    def pct(self) -> float | None:
        if self.trainable == 0:  # a prompting baseline: nothing trains, whatever the model's size
            return 0.0
        if self.trainable is None or not self.total:
            return None
        return 100.0 * self.trainable / self.total

    @property
    def status(self) -> str:
        if self.ok == self.runs:
            return "ok"
        return "failed" if self.ok == 0 else f"{self.runs - self.ok} of {self.runs} failed"


@dataclass
class Table:
    task: str
    metric: str
    split: str                  # validation (test when no run has validation metrics)
    greater_is_better: bool
    rows: list[Row]
    memory: str                 # what the memory column measures
    seeds: list
    has_test: bool = False
    setting: str = ""           # model and step budget, when the runs share them
    show_model: bool = False    # rows used different models (prompting.model=): a model column
    note: str = ""              # how the numbers were taken, when it matters (isolate=false)


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are there (None skipped); the
    std needs two values."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None


def memory_of(metrics: dict) -> tuple[float | None, str | None]:
    """(peak memory in MB, what it measures) from metrics.json's `memory` record."""
    memory = metrics.get("memory") or {}
    if memory.get("cuda_max_allocated_mb") is not None:
        return memory["cuda_max_allocated_mb"], "CUDA max allocated"
    if memory.get("peak_rss_growth_mb") is not None:
        return memory["peak_rss_growth_mb"], "peak RSS growth of the process during the run (CPU)"
    return None, None


def build_table(results: list[RunResult], order: list[str] | None = None) -> Table:
    """One row per method (in `order`, then by first appearance), from the runs' metrics."""
    finished = [r.metrics for r in results if r.metrics]
    if not finished:
        first = {"main_metric": "main metric", "greater_is_better": True, "task": "?"}
    else:
        first = finished[0]
        tasks = sorted({str(m.get("task")) for m in finished})
        if len(tasks) > 1:
            raise UserError(f"compare: the runs are of different tasks ({', '.join(tasks)}); compare runs of one task.")
    metric = first["main_metric"]
    split = "validation" if any(metric in (m.get("validation") or {}) for m in finished) or not finished else "test"
    methods = list(dict.fromkeys([*(order or []), *(r.method for r in results)]))
    rows = [_row(method, [r for r in results if r.method == method], metric, split) for method in methods]
    kinds = sorted({k for m in finished if (k := memory_of(m)[1])})
    shown = [r for r in rows if r.runs]
    return Table(
        task=str(first.get("task")), metric=metric, split=split, greater_is_better=bool(first.get("greater_is_better", True)),
        rows=shown, memory=" / ".join(kinds) or "not recorded",
        seeds=sorted({r.seed for r in results if isinstance(r.seed, int)}),
        has_test=split == "validation" and any(metric in (m.get("test") or {}) for m in finished),
        setting=_setting(results), show_model=len({r.model for r in shown if r.model}) > 1,
    )


def _row(method: str, runs: list[RunResult], metric: str, split: str) -> Row:
    ok = [r.metrics for r in runs if r.metrics]

    def values(*keys):
        out = []
        for m in ok:
            value = m
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            out.append(value)
        return out

    trainable = next((v for v in values("params", "trainable") if v is not None), None)
    total = next((v for v in values("params", "total") if v is not None), None)
    return Row(
        method=method, runs=len(runs), ok=len(ok),
        metric=mean_std(values(split, metric)), test=mean_std(values("test", metric)) if split == "validation" else (None, None),
        trainable=trainable, total=total, memory_mb=mean_std(memory_of(m)[0] for m in ok)[0],
        train_s=mean_std(values("train", "train_s"))[0], tokens_per_s=mean_std(values("train", "tokens_per_s"))[0],
        errors=[f"seed {r.seed}: {r.error}" for r in runs if not r.metrics and r.error],
        model=" / ".join(sorted({m for r in runs if (m := run_model(r))})),
    )


def _setting(results: list[RunResult]) -> str:
    """'model X, N steps' when every run shares them."""
    models = {m for r in results if (m := run_model(r))}
    steps = {((r.metrics or {}).get("train") or {}).get("steps") for r in results if r.metrics}
    parts = []
    if len(models) == 1:
        parts.append(f"model {models.pop()}")
    if len(steps) == 1 and None not in steps:
        parts.append(f"{steps.pop()} steps")
    return ", ".join(parts)


def run_model(run: RunResult) -> str:
    """The model a run used: its config's (a training run), else what its metrics name (a
    prompting baseline writes the model it prompted); "" when neither says."""
    model = (run.config or {}).get("model") or {}
    name = model.get("name_or_path") or (model.get("config") or {}).get("model_type") or (run.metrics or {}).get("model") or ""
    return _short(str(name))


def _short(name: str) -> str:
    """A model folder, file or package as the table shows it: its last part (the full path is in the run)."""
    name = name.removeprefix("package:")
    return Path(name).name if "/" in name or "\\" in name else name


def varying_settings(results: list[RunResult]) -> list[str]:
    """Settings besides method and seed that differ between the runs (runs=[...] may mix
    anything): the rows then do not compare like with like."""
    configs = [r.config for r in results if r.config]
    keys: set[str] = set()
    for cfg in configs[1:]:
        keys.update(k for k in differing_settings(configs[0], cfg) if k != "seed" and not k.startswith("peft"))
    return sorted(keys)


# --------------------------------------------------------------------------- formats
def header(table: Table) -> list[str]:
    cols = ["method", *(["model"] if table.show_model else []), "runs", "status", f"{table.metric} ({table.split})"]
    if table.has_test:
        cols.append(f"{table.metric} (test)")
    return [*cols, "trainable params", "trainable %", "peak memory MB", "train s", "tokens/s", "error"]


def display_rows(table: Table) -> list[list[str]]:
    """The cells of the printed and Markdown tables (CSV keeps full precision)."""
    rows = []
    for r in table.rows:
        cells = [r.method, *([r.model or "-"] if table.show_model else []), str(r.runs), r.status, _pm(r.metric)]
        if table.has_test:
            cells.append(_pm(r.test))
        cells += [_int(r.trainable), _pct(r.pct), _num(r.memory_mb, "{:,.0f}"), _num(r.train_s, "{:,.1f}"), _num(r.tokens_per_s, "{:,.0f}"),
                  "; ".join(r.errors)]
        rows.append(cells)
    return rows


def _pm(stat: tuple[float | None, float | None]) -> str:
    mean, std = stat
    if mean is None:
        return "-"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _int(value) -> str:
    return "-" if value is None else f"{int(value):,}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}%"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def caption(table: Table) -> str:
    seeds = ", ".join(map(str, table.seeds))
    direction = "higher" if table.greater_is_better else "lower"
    setting = f"; {table.setting}" if table.setting else ""
    return (f"{table.task}: {table.metric} on {table.split} ({direction} is better), mean ± std over seeds {seeds}{setting}. "
            f"Peak memory: {table.memory}. Train s: the training loop without its evaluations; tokens/s: non-pad tokens trained per second of it."
            + (f" {table.note}" if table.note else ""))


def to_csv(table: Table) -> str:
    m = table.metric
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "model", "runs", "ok", "status", f"{m}_mean", f"{m}_std", f"test_{m}_mean", f"test_{m}_std", "trainable_params",
                     "total_params", "trainable_pct", "peak_memory_mb", "memory_measure", "train_s", "tokens_per_s", "error"])
    for r in table.rows:
        writer.writerow(["" if v is None else v for v in (
            r.method, r.model, r.runs, r.ok, r.status, *r.metric, *r.test, r.trainable, r.total, r.pct, r.memory_mb, table.memory,
            r.train_s, r.tokens_per_s, "; ".join(r.errors))])
    return out.getvalue()


def to_markdown(table: Table) -> str:
    cols = header(table)
    rows = display_rows(table)
    if not any(r.errors for r in table.rows):  # no failure: no error column
        cols, rows = cols[:-1], [row[:-1] for row in rows]
    lines = [caption(table), "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(table: Table, path: Path) -> Path | None:
    """compare.png: the main metric (mean ± std) against the trainable share of parameters,
    log x, one labelled point per method; a method that trains nothing (a prompting baseline)
    is a dashed line. None when no method has a value."""
    points = [r for r in table.rows if r.metric[0] is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    try:
        for i, row in enumerate(points):
            _draw_point(ax, row, f"C{i % 10}")
        ax.set_xscale("log")
        pcts = [r.pct for r in points if r.pct]
        if pcts:  # room for the labels at both ends
            ax.set_xlim(min(pcts) / 3, max(pcts) * 3)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}%"))
        ax.set_xlabel("trainable parameters (% of the model, log scale)")
        ax.set_ylabel(f"{table.metric} ({table.split})")
        ax.set_title(f"{table.task}: {table.metric} vs trainable parameters (± std over seeds)")
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _draw_point(ax, row: Row, color: str) -> None:
    mean, std = row.metric
    if not row.pct:  # nothing trains: no place on a log axis; a line across the plot
        ax.axhline(mean, color=color, linestyle="--", linewidth=1)
        ax.annotate(row.method, (0.01, mean), xycoords=("axes fraction", "data"), textcoords="offset points", xytext=(2, 3), color=color, fontsize="small")
        return
    ax.errorbar([row.pct], [mean], yerr=[std or 0.0], fmt="o", color=color, capsize=4)
    ax.annotate(row.method, (row.pct, mean), textcoords="offset points", xytext=(6, 4), color=color)


def write(table: Table, out: Path) -> list[Path]:
    """compare.csv, compare.md and compare.png in `out`; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.csv").write_text(to_csv(table))
    (out / "compare.md").write_text(to_markdown(table))
    written = [out / "compare.csv", out / "compare.md"]
    png = plot(table, out / "compare.png")
    return written + ([png] if png else [])


def show(table: Table) -> None:
    from rich.console import Console
    from rich.markup import escape

    from llmtune.ui.console import rows_table

    rows = [[escape(c) for c in row] for row in display_rows(table)]
    cols = header(table)
    if not any(r.errors for r in table.rows):
        cols, rows = cols[:-1], [row[:-1] for row in rows]
    out = Console(file=sys.stdout)
    if not out.is_terminal:  # a log or a pipe: one line per row, not wrapped at 80 columns
        out = Console(file=sys.stdout, width=200)
    out.print(rows_table(f"compare {table.task}", cols, rows))
    print(caption(table))
