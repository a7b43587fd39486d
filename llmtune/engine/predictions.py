"""Per-example predictions a task handed over in an evaluation (EvalContext.report_predictions):
written as JSON lines and shown, a few of them, in the log.

Training writes `<run dir>/predictions/<split>.jsonl` at every evaluation of that split (the
file always holds the latest one: after training, the weights that shipped); `llmtune evaluate`
writes them beside its output= file. A file is written under a temporary name and renamed, so
a reader never sees half of one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("llmtune")
SHOWN_CHARS = 160  # each field of a logged sample is cut to this many characters


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())  # one line in the log
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def log_samples(split: str, rows: list[dict], show: int) -> None:
    """The first `show` records, one log line each: field: value -> field: value."""
    for number, row in enumerate(rows[:show], start=1):
        log.info("%s sample %d: %s", split, number, " -> ".join(f"{key}: {_short(value)}" for key, value in row.items()))


def write(path: Path, rows: list[dict]) -> None:
    """`rows` as JSON lines at `path` (complete or not at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with partial.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def hand_over(ctx, split: str, path: Path | None, is_main: bool) -> Path | None:
    """Take what the task reported in the evaluation just done (ctx: its EvalContext); on the
    main process, log a few and write them all to `path` (None: log only). Returns the file written."""
    rows, show = ctx.take_predictions()
    if rows is None or not is_main:
        return None
    log_samples(split, rows, show)
    if path is None:
        return None
    write(path, rows)
    return path
