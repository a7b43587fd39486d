"""The forgetting report of a sequence, and several sequences' reports side by side.

R[i][j] is stage j's main metric (test split, else validation) after training stage i; b_j
the initial model's (pretrained backbone, fresh head). With T stages:

    average final   mean_j R[T][j]
    BWT             mean_{j<T} (R[T][j] - R[j][j])                 backward transfer (< 0: forgetting)
    FWT             mean_{j>1} (R[j-1][j] - b_j)                   forward transfer, where R[j-1][j] exists
    forgetting      mean_{j<T} (max_{i<T} R[i][j] - R[T][j])      average forgetting

Written to <out>/report.json, report.md and report.png (a heatmap of R); `compare` renders
several reports as one table (rich, Markdown, CSV).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

REPORT = "report.json"


def matrix(state: dict) -> tuple[list[str], list[list[float | None]]]:
    """(stage names, R) from a sequence's state (continual.json): R[i][j], 0-based."""
    names = list(state["stages"])
    rows = [[state["rows"].get(str(i + 1), {}).get(name) for name in names] for i in range(len(names))]
    return names, rows


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summary(names: list[str], R: list[list[float | None]], baselines: dict[str, float]) -> dict:
    """Average final metric, BWT, FWT and average forgetting of a complete matrix."""
    T = len(names) - 1  # 0-based index of the last stage
    final = [v for v in R[T] if v is not None]
    bwt = [R[T][j] - R[j][j] for j in range(T) if R[T][j] is not None and R[j][j] is not None]
    fwt = [R[j - 1][j] - baselines[names[j]] for j in range(1, T + 1) if R[j - 1][j] is not None and baselines.get(names[j]) is not None]
    forgetting = []
    for j in range(T):
        earlier = [R[i][j] for i in range(T) if R[i][j] is not None]
        if earlier and R[T][j] is not None:
            forgetting.append(max(earlier) - R[T][j])
    return {"average_final": _mean(final), "bwt": _mean(bwt), "fwt": _mean(fwt), "forgetting": _mean(forgetting)}


def build(state: dict) -> dict:
    names, R = matrix(state)
    metric = next((row.get("_metric") for row in state["rows"].values() if row.get("_metric")), None)
    return {"method": state["method"], "heads": state.get("heads", "shared"), "metric": metric, "stages": names,
            "matrix": R, "baselines": state.get("baselines", {}), **summary(names, R, state.get("baselines", {}))}


def write(out: Path, state: dict) -> dict:
    """report.json, report.md and report.png in `out`; prints the table; returns the report."""
    rep = build(state)
    (out / REPORT).write_text(json.dumps(rep, indent=1))
    (out / "report.md").write_text(markdown(rep))
    heatmap(rep, out / "report.png")
    print_report(rep)
    print(f"report: {out / 'report.md'}")
    return rep


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _matrix_rows(rep: dict) -> list[list[str]]:
    return [[f"after {name}", *(_fmt(v) for v in row)] for name, row in zip(rep["stages"], rep["matrix"], strict=True)]


SUMMARY_KEYS = (("average_final", "avg final"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forgetting"))


def markdown(rep: dict) -> str:
    head = ["", *(f"on {n}" for n in rep["stages"])]
    lines = [f"### continual={rep['method']} ({rep['metric']}, heads={rep['heads']})", "", _md_row(head), _md_row(["---"] * len(head))]
    lines += [_md_row(r) for r in _matrix_rows(rep)]
    lines += ["", _md_row([label for _, label in SUMMARY_KEYS]), _md_row(["---"] * len(SUMMARY_KEYS)), _md_row([_fmt(rep[k]) for k, _ in SUMMARY_KEYS]), ""]
    return "\n".join(lines)


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def print_report(rep: dict) -> None:
    from llmtune.ui.console import print_table, rows_table

    print_table(rows_table(f"continual={rep['method']}: {rep['metric']} after each stage (rows) on each stage (columns)",
                           ["", *(f"on {n}" for n in rep["stages"])], _matrix_rows(rep)))
    print_table(rows_table("forgetting report", [label for _, label in SUMMARY_KEYS], [[rep[k] for k, _ in SUMMARY_KEYS]]))


def heatmap(rep: dict, path: Path) -> Path:
    """R as a heatmap: rows after each stage, columns each stage's data; blank where unscored."""
    from llmtune.ui.plots import _pyplot

    plt = _pyplot()
    n = len(rep["stages"])
    values = [[float("nan") if v is None else v for v in row] for row in rep["matrix"]]
    fig, ax = plt.subplots(figsize=(1.6 * n + 2.4, 1.3 * n + 1.6), dpi=100)
    try:
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
        for i in range(n):
            for j in range(n):
                if rep["matrix"][i][j] is not None:
                    ax.text(j, i, f"{values[i][j]:.2f}", ha="center", va="center", color="white" if values[i][j] < 0.6 else "black")
        ax.set_xticks(range(n), [f"on {s}" for s in rep["stages"]])
        ax.set_yticks(range(n), [f"after {s}" for s in rep["stages"]])
        ax.set_title(f"continual={rep['method']}: {rep['metric']}  (BWT {_fmt(rep['bwt'])})")
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------ side by side
def load(path: Path) -> dict:
    from llmtune.errors import UserError

    file = Path(path) / REPORT if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise UserError(f"{path}: no {REPORT} (a finished `llmtune continual` directory has one); name a sequence's output_dir.")
    return json.loads(file.read_text())


def side_by_side(reports: list[dict]) -> tuple[list[str], list[list]]:
    """(header, rows): one row per report, its summary and final-row scores."""
    stages = reports[0]["stages"]
    header = ["method", *(label for _, label in SUMMARY_KEYS), *(f"final on {s}" for s in stages)]
    rows = []
    for rep in reports:
        final = rep["matrix"][-1] if rep["stages"] == stages else [None] * len(stages)
        rows.append([rep["method"], *(rep[k] for k, _ in SUMMARY_KEYS), *final])
    return header, rows


def compare(paths: list[Path], out: Path | None = None) -> str:
    """Several sequences' reports side by side: printed (rich), returned as Markdown, and with
    `out` written as <out>.md and <out>.csv."""
    from llmtune.ui.console import print_table, rows_table

    reports = [load(p) for p in paths]
    header, rows = side_by_side(reports)
    print_table(rows_table(f"continual methods side by side ({reports[0]['metric']})", header, rows))
    md = "\n".join([_md_row(header), _md_row(["---"] * len(header)), *(_md_row([_fmt(v) if not isinstance(v, str) else v for v in r]) for r in rows)]) + "\n"
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(md)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows([[("" if v is None else v) for v in r] for r in rows])
        out.with_suffix(".csv").write_text(buffer.getvalue())
    return md
