"""`llmtune plot RUN [RUN ...]`: overlay several runs' training curves, read from their
train_log.jsonl (finished, stopped or still running), one line per run, a legend by run name."""

from __future__ import annotations

from pathlib import Path

from llmtune.commands._args import describe

HELP = "overlay several runs' curves (loss, lr, validation metrics) as PNG files"
KEYS = {
    "output": (Path, Path("plots"), "the folder for the PNG files (created; files of the same name are replaced)"),
    "metric": (str, None, "only these validation metrics, comma-separated (default: every one the runs logged)"),
}
USAGE = f"""\
usage: llmtune plot RUN [RUN ...] [key=value ...]

Each RUN is a run directory (it holds train_log.jsonl) or its final/. Writes loss.png (training
loss, validation loss dashed), lr.png and eval_<metric>.png, one line per run. Every run also
writes its own plots/ at the end of training (switch off with callbacks.plots=null).

arguments:
{describe(KEYS)}

examples:
  llmtune plot runs/ner-lora runs/ner-full output=compare/
  llmtune plot runs/sweep/* metric=f1
"""


def main(argv: list[str]) -> None:
    from llmtune.commands._args import HELP_FLAGS, parse
    from llmtune.errors import UserError
    from llmtune.ui.plots import eval_metrics, read_curves, write_plots

    paths = [a for a in argv if "=" not in a and a not in HELP_FLAGS]
    args = parse([a for a in argv if a not in paths], KEYS, verb="plot")
    if not paths:
        raise UserError("`llmtune plot` needs at least one RUN directory before its key=value arguments; see `llmtune plot --help`.")
    runs = [run_of(Path(p)) for p in paths]
    curves = [read_curves(run, name) for run, name in zip(runs, run_names(runs), strict=True)]
    metrics = None
    if args.metric:
        metrics = [m.strip() for m in args.metric.split(",") if m.strip()]
        known = eval_metrics(curves)
        for m in metrics:
            if m not in known:
                raise UserError(f"plot: metric={m}: no run logged it; the runs' validation metrics: {', '.join(known) or 'none'}.")
    written = write_plots(curves, args.output, metrics)
    print(f"wrote {len(written)} plots of {len(runs)} run(s) to {args.output}: {', '.join(p.name for p in written)}")


def run_of(path: Path) -> Path:
    """The run directory of `path` (a run directory or its final/), or one line saying why not."""
    from llmtune.errors import UserError

    for candidate in (path, path.parent):
        if (candidate / "train_log.jsonl").is_file():
            return candidate
    raise UserError(f"plot: {path} is not a run directory (no train_log.jsonl in it); give the folder a run wrote (its output_dir).")


def run_names(runs: list[Path]) -> list[str]:
    """Legend labels: each run's folder name, or its path when two runs share a name."""
    names = [r.resolve().name for r in runs]
    return [n if names.count(n) == 1 else str(r) for n, r in zip(names, runs, strict=True)]
