"""Hydra callback: at the end of a multirun, a table of overrides -> main metric, also written
to summary.csv in the sweep directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hydra.experimental.callback import Callback


class SweepSummary(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarize(sweep_dir)
        if not rows:
            return
        header = list(rows[0])
        with (sweep_dir / "summary.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        from llmtune.ui.console import print_table, rows_table

        print_table(rows_table(f"sweep {sweep_dir} (summary.csv)", header, [list(r.values()) for r in rows]))


def summarize(sweep_dir: Path) -> list[dict]:
    """One row per job directory: job number, the overrides that vary between jobs, main
    metric (validation) and test."""
    import yaml

    rows = []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    overrides = {}
    for job in jobs:
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides[job] = (yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else None) or []
    shared = set.intersection(*(set(o) for o in overrides.values())) if len(overrides) > 1 else set()
    for job in jobs:
        row = {"job": job.name, "overrides": " ".join(o for o in overrides[job] if o not in shared)}
        metrics_file = job / "metrics.json"
        if metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
            main = metrics["main_metric"]
            row["main_metric"] = main
            row["validation"] = (metrics.get("validation") or {}).get(main)
            row["test"] = (metrics.get("test") or {}).get(main)
            row["status"] = "ok"
        else:
            row.update(main_metric=None, validation=None, test=None, status="failed")
        rows.append(row)
    return rows
