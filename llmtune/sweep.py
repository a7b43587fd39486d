"""Sweeps. A Hydra callback: at the end of a multirun, a table of overrides -> main metric, also
written to summary.csv in the sweep directory. And `llmtune sweep-report`'s reading of a finished
or running sweep directory: jobs ranked by the main metric, the best command, plots."""

from __future__ import annotations

import csv
import json
import shlex
from dataclasses import dataclass, field
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


# --------------------------------------------------------------------------- llmtune sweep-report
@dataclass
class Job:
    """One job of a sweep as its directory tells it: status ok (metrics.json), running (its lock
    is held) or failed (its error line, when the job wrapper recorded one)."""

    num: int
    status: str
    overrides: dict[str, str] = field(default_factory=dict)
    value: float | None = None  # the main metric on validation (test when there is none)
    test: float | None = None
    error: str = ""


@dataclass
class Sweep:
    path: Path
    jobs: list[Job]
    metric: str = "main metric"
    greater_is_better: bool = True
    config_name: str = "finetune"

    def varying(self) -> list[str]:
        """The override keys whose value is not the same in every job (a key some jobs lack counts)."""
        keys = dict.fromkeys(k for job in self.jobs for k in job.overrides)
        return [k for k in keys if len({job.overrides.get(k) for job in self.jobs}) > 1]

    def ranked(self) -> list[Job]:
        """Finished jobs best first, then running ones, then failed ones (each by job number)."""
        sign = -1 if self.greater_is_better else 1
        order = {"ok": 0, "running": 1, "failed": 2}
        return sorted(self.jobs, key=lambda j: (order[j.status], j.value is None, sign * (j.value or 0.0), j.num))

    def best_command(self) -> str | None:
        """The command line that reruns the best job on its own, into <sweep dir>/best."""
        best = next((j for j in self.ranked() if j.status == "ok" and j.value is not None), None)
        if best is None:
            return None
        head = ["llmtune", self.config_name] if self.config_name in ("finetune", "pretrain") else ["llmtune", "run", self.config_name]
        args = [f"{k}={v}" for k, v in best.overrides.items() if k != "output_dir"]
        return shlex.join([*head, *args, f"output_dir={self.path / 'best'}"])


def load_sweep(path: Path) -> Sweep:
    """Read a finished or running multirun directory (the output_dir of `llmtune ... -m`)."""
    from llmtune.errors import UserError

    nums = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()) if path.is_dir() else []
    if not nums:
        raise UserError(f"{path} is not a multirun sweep (no numbered job directories in it); "
                        "point sweep-report at the output_dir of an `llmtune finetune -m ...` run.")
    sweep = Sweep(path, [_load_job(path, n) for n in nums])
    for num in nums:
        metrics = _read_json(path / str(num) / "metrics.json")
        if metrics:
            sweep.metric, sweep.greater_is_better = metrics["main_metric"], bool(metrics.get("greater_is_better", True))
            break
    sweep.config_name = _config_name(path, nums)
    return sweep


def _load_job(sweep_dir: Path, num: int) -> Job:
    import yaml

    from llmtune.rundir import lock_holder

    job_dir = sweep_dir / str(num)
    error = _read_json(sweep_dir / "errors" / f"{num}.json") or {}
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    listed = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else error.get("overrides")
    job = Job(num, "failed", dict(o.split("=", 1) for o in listed or [] if "=" in o))
    metrics = _read_json(job_dir / "metrics.json")
    if metrics:
        main = metrics["main_metric"]
        job.status, job.test = "ok", (metrics.get("test") or {}).get(main)
        job.value = (metrics.get("validation") or {}).get(main, job.test)
    elif lock_holder(job_dir) is not None:
        job.status = "running"
    else:
        job.error = error.get("error") or "no error recorded (the job was killed, or is about to start)"
    return job


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _config_name(sweep_dir: Path, nums: list[int]) -> str:
    """The command or recipe the sweep ran (Hydra's config name), from a job's .hydra/hydra.yaml
    or the sweep's multirun.yaml."""
    import yaml

    for path in [*(sweep_dir / str(n) / ".hydra" / "hydra.yaml" for n in nums), sweep_dir / "multirun.yaml"]:
        if path.is_file():
            saved = yaml.safe_load(path.read_text()) or {}
            hydra = saved.get("hydra", saved)
            name = (hydra.get("job") or {}).get("config_name")
            if name:
                return str(name)
    return "finetune"


def report_rows(sweep: Sweep) -> tuple[list[str], list[list]]:
    """(header, rows) of the report: rank, job, status, the varying overrides, the metric, then
    the test metric and the error line when some job has one."""
    keys = sweep.varying()
    header = ["rank", "job", "status", *keys, sweep.metric, f"test {sweep.metric}", "error"]
    rows = []
    for rank, job in enumerate(sweep.ranked(), 1):
        shown_rank = rank if job.status == "ok" else None
        rows.append([shown_rank, job.num, job.status, *(job.overrides.get(k) for k in keys), job.value, job.test, job.error])
    keep = [i for i, name in enumerate(header) if i < len(header) - 2 or any(row[i] not in (None, "") for row in rows)]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in rows]


def write_csv(header: list[str], rows: list[list], out) -> None:
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])


def shown(value):
    """A value as the table and Markdown show it: a long number an Optuna sampler drew
    (0.19273255210020587) as 4 significant digits; CSV and the best command keep it whole."""
    if isinstance(value, str) and len(value) > 8 and _number(value) is not None:
        return f"{float(value):.4g}"
    return value


def to_markdown(header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        v = shown(v)
        text = "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_sweep(sweep: Sweep, out_dir: Path) -> list[Path]:
    """One PNG per swept numeric hyperparameter: the main metric of each finished job against its
    value (log scale for values spanning two decades or more, e.g. a learning rate)."""
    points = {}
    for key in sweep.varying():
        pairs = [(_number(j.overrides.get(key)), j.value) for j in sweep.jobs if j.value is not None]
        pairs = [(x, y) for x, y in pairs if x is not None]
        if len({x for x, _ in pairs}) > 1:
            points[key] = pairs
    if not points:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, pairs in points.items():
        xs, ys = [x for x, _ in sorted(pairs)], [y for _, y in sorted(pairs)]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(xs, ys, "o", color="tab:blue")
        if min(xs) > 0 and max(xs) / min(xs) >= 100:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"validation {sweep.metric}")
        ax.set_title(f"{sweep.metric} vs {key} ({len(xs)} jobs)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
