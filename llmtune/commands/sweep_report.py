"""`llmtune sweep-report DIR`: the jobs of a finished or running multirun, best first."""

from __future__ import annotations

from pathlib import Path

from llmtune.commands._args import describe

KEYS = {
    "format": (("table", "csv", "markdown"), "table", "what to print: a table, CSV or Markdown"),
    "output": (Path, None, "also write the report to this file, CSV or Markdown by its suffix (.csv, .md)"),
    "plots": (bool, True, "write DIR/sweep-report/<key>.png: the metric against each swept numeric key"),
}
HELP = "rank the jobs of a multirun sweep: table, best command, CSV/Markdown, plots"
USAGE = f"""\
usage: llmtune sweep-report DIR [key=value ...]

DIR is the output_dir of a multirun (`llmtune finetune -m ...`, `llmtune run RECIPE -m`), finished
or still running. One row per job, best first by the main metric on validation; the overrides
that differ between jobs are the columns; a failed job shows its error line, a running one its
status. Ends with the command that reruns the best job on its own.

arguments:
{describe(KEYS)}
"""


def main(argv: list[str]) -> None:
    import sys

    from llmtune.commands._args import parse
    from llmtune.errors import UserError
    from llmtune.sweep import load_sweep, plot_sweep, report_rows, to_markdown, write_csv

    args = parse(argv, KEYS, verb="sweep-report", positional="DIR")
    output = args.output
    if output is not None and output.suffix not in (".csv", ".md"):
        raise UserError(f"sweep-report: output={output} must end in .csv or .md (CSV or Markdown).")
    sweep = load_sweep(Path(args.path).expanduser())
    header, rows = report_rows(sweep)
    if args.format == "csv":
        write_csv(header, rows, sys.stdout)
    elif args.format == "markdown":
        print(to_markdown(header, rows), end="")
    else:
        _print_table(sweep, header, rows)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix == ".csv":
            with output.open("w", newline="") as f:
                write_csv(header, rows, f)
        else:
            output.write_text(to_markdown(header, rows))
    # In CSV/Markdown mode stdout is the data; the rest goes to stderr.
    note = sys.stdout if args.format == "table" else sys.stderr
    try:
        plots = plot_sweep(sweep, sweep.path / "sweep-report") if args.plots else []
    except ImportError as exc:  # matplotlib: the report stands without its plots
        plots = []
        print(f"no plots ({exc.name} is not installed: pip install matplotlib)", file=note)
    best = sweep.best_command()
    print(f"best: {best}" if best else "best: none yet (no job has finished)", file=note)
    for path in [*([output] if output else []), *plots]:
        print(f"wrote {path}", file=note)


def _print_table(sweep, header: list[str], rows: list[list]) -> None:
    from rich.markup import escape

    from llmtune.sweep import shown
    from llmtune.ui.console import print_table, rows_table

    # Values are text, not markup: `[...]` in an override or an error line must show as is.
    rows = [[escape(v) if isinstance(v, str) else v for v in map(shown, row)] for row in rows]

    counts = {s: sum(j.status == s for j in sweep.jobs) for s in ("ok", "running", "failed")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    direction = "higher" if sweep.greater_is_better else "lower"
    title = f"sweep {sweep.path}: {summary} ({sweep.metric} on validation, {direction} is better)"
    print_table(rows_table(title, header, rows))
