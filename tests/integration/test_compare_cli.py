"""`llmtune compare` end to end on tiny_bert: two methods × two seeds trained in process, the
table checked against the runs' own metrics.json, then rebuilt from the runs (runs=[...])."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from conftest import ASSETS, run_cli


def _args(out, *extra: str, methods: str = "methods=[none,bitfit]") -> list[str]:
    return [
        "compare", "task=ner", "model=tiny_bert", methods, *extra,
        f"data.train_file={ASSETS / 'ner_train.conll'}", f"data.validation_file={ASSETS / 'ner_dev.conll'}",
        "trainer.max_steps=2", "trainer.max_epochs=null", "trainer.batch_size=4", "callbacks=quiet", "callbacks.plots=null",
        f"output_dir={out}",
    ]


def _csv(path) -> dict[str, dict]:
    return {row["method"]: row for row in csv.DictReader(path.open())}


def test_compare_one_tiny_run_in_process(tmp_path):
    """The fast one: a single run, in this process; the job's new metrics.json fields."""
    out = tmp_path / "cmp"
    result = run_cli(*_args(out, "seeds=[3]", "isolate=false", methods="methods=[bitfit]"))
    assert result.code == 0, result.text[-3000:]
    metrics = json.loads((out / "bitfit" / "seed-3" / "metrics.json").read_text())
    assert 0 < metrics["params"]["trainable"] < metrics["params"]["total"]
    assert metrics["memory"]["peak_rss_growth_mb"] >= 0
    assert metrics["train"]["tokens"] > 0 and metrics["train"]["tokens_per_s"] > 0 and 0 < metrics["train"]["train_s"] <= metrics["train"]["runtime_s"]
    row = _csv(out / "compare.csv")["bitfit"]
    assert (row["status"], row["runs"], row["f1_std"]) == ("ok", "1", "")  # one seed: no spread
    assert float(row["f1_mean"]) == pytest.approx(metrics["validation"]["f1"])
    assert float(row["trainable_pct"]) == pytest.approx(100 * metrics["params"]["trainable"] / metrics["params"]["total"])
    assert (out / "compare.png").stat().st_size > 0 and "| bitfit | 1 | ok |" in (out / "compare.md").read_text()


@pytest.mark.slow
def test_compare_trains_every_method_and_seed_and_tabulates_them(tmp_path):
    out = tmp_path / "cmp"
    result = run_cli(*_args(out, "seeds=[1,2]", "isolate=false"))
    assert result.code == 0, result.text[-3000:]
    assert {p.name for p in out.iterdir()} == {"none", "bitfit", "compare.csv", "compare.md", "compare.png"}
    rows = _csv(out / "compare.csv")
    assert list(rows) == ["none", "bitfit"]
    for method, row in rows.items():
        runs = [json.loads((out / method / f"seed-{s}" / "metrics.json").read_text()) for s in (1, 2)]
        # What the job now records for every run: parameter counts, peak memory, throughput.
        for m in runs:
            assert m["params"]["total"] >= m["params"]["trainable"] > 0
            assert m["memory"]["peak_rss_growth_mb"] >= 0
            assert m["train"]["tokens"] > 0 and m["train"]["tokens_per_s"] > 0 and 0 < m["train"]["train_s"] <= m["train"]["runtime_s"]
        f1 = [m["validation"]["f1"] for m in runs]
        assert row["status"] == "ok" and row["runs"] == "2"
        assert float(row["f1_mean"]) == pytest.approx(statistics.fmean(f1))
        assert float(row["f1_std"]) == pytest.approx(statistics.stdev(f1))
        assert int(row["trainable_params"]) == runs[0]["params"]["trainable"]
    assert float(rows["none"]["trainable_pct"]) == 100.0 > float(rows["bitfit"]["trainable_pct"])
    assert "isolate=false" in (out / "compare.md").read_text()  # the memory column's caveat
    assert "│ none" in result.out and "│ bitfit" in result.out

    # The same table from the finished runs, without training.
    again = run_cli("compare", f"runs=[{out / 'bitfit'},{out / 'none'}]", f"output_dir={tmp_path / 'table'}")
    assert again.code == 0, again.text[-2000:]
    rebuilt = _csv(tmp_path / "table" / "compare.csv")
    assert set(rebuilt) == {"none", "bitfit"}
    for method in rows:
        assert rebuilt[method]["f1_mean"] == rows[method]["f1_mean"] and rebuilt[method]["trainable_params"] == rows[method]["trainable_params"]


def test_compare_help_and_bad_method_are_one_line(cli, tmp_path):
    assert cli("compare", "--help").out.startswith("usage: llmtune compare")
    assert "  compare  " in cli("--help").out
    typo = cli("compare", "task=ner", "methods=[none,bitfti]", f"output_dir={tmp_path / 'cmp'}")
    assert typo.code == 2 and "Did you mean 'bitfit'?" in typo.err and typo.err.count("\n") == 1
    assert not (tmp_path / "cmp").exists()


@pytest.mark.slow
def test_compare_runs_each_run_in_its_own_process(tmp_path):
    """isolate=true (the default): each run in a child process; its peak memory is its own."""
    out = tmp_path / "cmp"
    result = run_cli(*_args(out, "seeds=[1]"))
    assert result.code == 0, result.text[-3000:]
    rows = _csv(out / "compare.csv")
    assert [rows[m]["status"] for m in ("none", "bitfit")] == ["ok", "ok"]
    assert all(float(rows[m]["peak_memory_mb"]) > 0 for m in rows)
    assert "isolate=false" not in (out / "compare.md").read_text()
