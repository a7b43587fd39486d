"""`llmtune sweep-report DIR` on a real tiny multirun (two jobs train, two fail on bad data), and
the shipped Optuna sweep recipes (recipes/sweeps/)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import ASSETS, ner_args, run_cli


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished multirun: optimizer.lr x data.train_file, where the second file is malformed
    (it fails when the data is read, after the sweep has started)."""
    tmp = tmp_path_factory.mktemp("sweep")
    bad = tmp / "bad.conll"
    bad.write_text("EU B-ORG\nrejects O\n\nthis line has four fields\n")
    out = tmp / "sweep"
    args = [a for a in ner_args(out, steps=2) if a != "finetune" and not a.startswith("data.train_file=")]
    result = run_cli("finetune", "-m", "optimizer.lr=1e-3,2e-2", f"data.train_file={ASSETS / 'ner_train.conll'},{bad}", *args)
    # The failed jobs do not stop the sweep; the first failure is reported at the end.
    assert result.code == 2, result.text[-3000:]
    assert "bad.conll line 4" in result.err
    return out


def _f1(job_dir) -> float:
    return json.loads((job_dir / "metrics.json").read_text())["validation"]["f1"]


def test_report_ranks_jobs_and_shows_failures(sweep):
    ok = sorted((p for p in sweep.iterdir() if (p / "metrics.json").exists()), key=_f1, reverse=True)
    assert len(ok) == 2
    result = run_cli("sweep-report", sweep, "format=csv")
    assert result.code == 0, result.text
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert [r["job"] for r in rows[:2]] == [p.name for p in ok]  # best first
    assert [r["rank"] for r in rows] == ["1", "2", "", ""]
    assert [float(r["f1"]) for r in rows[:2]] == [_f1(p) for p in ok]
    # The varying overrides are the columns; the shared ones are not.
    assert {"optimizer.lr", "data.train_file"} <= rows[0].keys() and "trainer.max_steps" not in rows[0]
    for row in rows[2:]:
        assert row["status"] == "failed" and row["data.train_file"].endswith("bad.conll")
        assert "bad.conll line 4" in row["error"]
    # The best command reruns the best job's overrides into <sweep>/best.
    best = next(line for line in result.err.splitlines() if line.startswith("best: "))
    assert best.startswith("best: llmtune finetune ") and f"optimizer.lr={rows[0]['optimizer.lr']}" in best
    assert f"output_dir={sweep / 'best'}" in best
    # One PNG per swept numeric key (the learning rate, not the file).
    assert (sweep / "sweep-report" / "optimizer.lr.png").read_bytes()[:4] == b"\x89PNG"
    assert not (sweep / "sweep-report" / "data.train_file.png").exists()


def test_report_table_and_markdown_file(sweep, tmp_path):
    result = run_cli("sweep-report", sweep, f"output={tmp_path / 'report.md'}", "plots=false")
    assert result.code == 0, result.text
    assert "2 ok, 2 failed" in result.out and "best: llmtune finetune" in result.out
    lines = (tmp_path / "report.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["rank", "job", "status"] and "f1" in header
    assert len(lines) == 2 + 4
    assert "failed" in lines[-1] and "bad.conll line 4" in lines[-1]


def test_report_refuses_a_directory_that_is_no_sweep(tmp_path):
    result = run_cli("sweep-report", tmp_path)
    assert result.code == 2
    assert "is not a multirun sweep" in result.err and len(result.err.strip().splitlines()) == 1
    assert run_cli("sweep_report", tmp_path, "output=x.txt").code == 2  # `_` works too; bad suffix


def test_sweep_recipes_are_listed(cli):
    result = cli("recipes")
    assert result.code == 0 and "sweeps/ner-lora-optuna" in result.out


def test_optuna_recipe_without_the_sweeper_says_how_to_install_it(cli, monkeypatch):
    from llmtune.commands import _hydra

    monkeypatch.setattr(_hydra, "optuna_sweeper_installed", lambda: False)
    result = cli("run", "sweeps/ner-lora-optuna", "-m")
    assert result.code == 2
    assert "pip install 'llmtune[optuna]'" in result.err and len(result.err.strip().splitlines()) == 1


def test_optuna_recipe_runs_two_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    out = tmp_path / "optuna"
    args = [a for a in ner_args(out, steps=2) if a not in ("finetune", "task=ner")]
    result = run_cli("run", "sweeps/ner-lora-optuna", "-m", "hydra.sweeper.n_trials=2", *args)
    assert result.code == 0, result.text[-3000:]
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["0", "1"]
    report = run_cli("sweep-report", out, "format=csv", "plots=false")
    rows = list(csv.DictReader(io.StringIO(report.out)))
    assert [r["status"] for r in rows] == ["ok", "ok"] and "optimizer.lr" in rows[0]
    assert "best: llmtune run sweeps/ner-lora-optuna " in report.err


def _fake_job(sweep, num: int, overrides: list[str], value: float | None = None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if value is not None:
        metrics = {"main_metric": "perplexity", "greater_is_better": False, "validation": {"perplexity": value}}
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_running_sweep_lower_is_better(tmp_path):
    """A sweep in progress: a job whose lock is held is running; ranks follow greater_is_better."""
    from llmtune.rundir import RunLock

    sweep = tmp_path / "sweep"
    _fake_job(sweep, 0, ["task=clm", "optimizer.lr=0.001"], value=40.0)
    _fake_job(sweep, 1, ["task=clm", "optimizer.lr=0.01"], value=25.5)
    _fake_job(sweep, 2, ["task=clm", "optimizer.lr=0.1"])
    lock = RunLock(sweep / "2")
    lock.acquire()
    try:
        result = run_cli("sweep-report", sweep, "format=csv")
    finally:
        lock.release()
    assert result.code == 0, result.text
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert [(r["job"], r["status"], r["rank"]) for r in rows] == [("1", "ok", "1"), ("0", "ok", "2"), ("2", "running", "")]
    assert "error" not in rows[0]  # no job failed: no error column
    assert "optimizer.lr=0.01 " in result.err  # the best command: the lowest perplexity
    # The lock released and no metrics: the job is reported as failed, without a recorded error.
    rows = list(csv.DictReader(io.StringIO(run_cli("sweep-report", sweep, "format=csv", "plots=false").out)))
    assert rows[-1]["status"] == "failed" and "no error recorded" in rows[-1]["error"]
