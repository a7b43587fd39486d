"""A Hydra multirun sweep through `python -m llmtune`: one job directory per combination and
a summary table (stdout and summary.csv) at the end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import yaml

from conftest import ROOT, cls_args


def test_sweep_writes_one_job_per_combination_and_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    args = [a for a in cls_args(sweep, steps=2) if a != "finetune"]
    command = [sys.executable, "-m", "llmtune", "finetune", "-m", "optimizer.lr=1e-4,3e-4", "peft=none,lora", *args]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LLMTUNE_CACHE": os.environ["LLMTUNE_CACHE"],
    }
    env.pop("LLMTUNE_DEBUG", None)
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        job_dir = sweep / job
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["main_metric"] == "accuracy"
        assert "accuracy" in metrics["validation"]
        cfg = yaml.safe_load((job_dir / "config.yaml").read_text())
        assert cfg["output_dir"] == str(job_dir.resolve())  # its own directory, not the sweep's
        assert (job_dir / "final").is_dir()
        seen.add((cfg["optimizer"]["lr"], cfg["peft"]["_target_"].rsplit(".", 1)[-1]))
    assert seen == {(1e-4, "FullFineTune"), (3e-4, "FullFineTune"), (1e-4, "LoRA"), (3e-4, "LoRA")}

    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert [r["job"] for r in rows] == jobs
    for row in rows:
        assert "optimizer.lr=" in row["overrides"] and "peft=" in row["overrides"]
        assert row["status"] == "ok"
        assert row["main_metric"] == "accuracy"
        assert 0.0 <= float(row["validation"]) <= 1.0
    overrides = {r["overrides"] for r in rows}
    assert len(overrides) == 4

    # The summary table is printed at the end.
    assert "summary.csv" in proc.stdout
    for row in rows:
        assert row["overrides"].split()[0] in proc.stdout
