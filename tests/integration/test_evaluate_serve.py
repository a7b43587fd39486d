"""`llmtune evaluate` and `llmtune serve` on real tiny runs, through the CLI entry point.

evaluate must give metrics.json's numbers on the run's own splits (the same data loading,
labels, tokenization, loader and metrics as training), whatever PATH names: final/, the run
directory or the last checkpoint; full fine-tuning, LoRA and BitFit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ASSETS, cls_args, lm_args, ner_args, run_cli

TEST_FILE = ASSETS / "ner_dev.conll"
OTHER_FILE = ASSETS / "ner_train.conll"


def _train(args: list[str]) -> Path:
    out = Path(next(a for a in args if a.startswith("output_dir=")).split("=", 1)[1])
    result = run_cli(*args)
    assert result.code == 0, result.text[-2000:]
    return out


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory) -> Path:
    return _train([*ner_args(tmp_path_factory.mktemp("ner") / "run"), f"data.test_file={TEST_FILE}"])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    return _train([*ner_args(tmp_path_factory.mktemp("lora") / "run"), f"data.test_file={TEST_FILE}", "peft=lora"])


@pytest.fixture(scope="module")
def bitfit_run(tmp_path_factory) -> Path:
    # The validation split is held out of the training file: evaluate must hold out the same rows.
    args = cls_args(tmp_path_factory.mktemp("bitfit") / "run")
    return _train([*args, "peft=bitfit", "data.validation_file=null", "data.validation_split=0.25", f"data.test_file={ASSETS / 'cls_dev.jsonl'}"])


def evaluate(path, *args: str, tmp: Path) -> dict:
    """`llmtune evaluate PATH ARGS output=...` -> the JSON it wrote."""
    out = tmp / "eval.json"
    result = run_cli("evaluate", path, *args, f"output={out}")
    assert result.code == 0, result.text[-2000:]
    report = json.loads(out.read_text())
    out.unlink()
    return report


def assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-4), name


def _listing(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*")}


def test_evaluate_reproduces_the_test_metrics_from_final_run_dir_and_last_checkpoint(ner_run, tmp_path):
    expected = json.loads((ner_run / "metrics.json").read_text())
    before = _listing(ner_run)
    last = ner_run / "checkpoints" / f"step-{expected['train']['steps']}"
    for path, kind in ((ner_run / "final", "final"), (ner_run, "final"), (last, "checkpoint")):
        report = evaluate(path, tmp=tmp_path)
        assert report["kind"] == kind and report["task"] == "ner" and report["main_metric"] == "f1"
        assert report["examples"] == 12 and str(TEST_FILE) in report["data"]
        assert_same(report["test"], expected["test"])
    assert _listing(ner_run) == before  # evaluate writes nothing into the run


def test_evaluate_validation_split_and_table(ner_run, tmp_path):
    expected = json.loads((ner_run / "metrics.json").read_text())
    result = run_cli("evaluate", ner_run, "split=validation", "batch_size=5")  # another batching: the same numbers
    assert result.code == 0, result.text[-2000:]
    assert "validation" in result.out and "f1 (main)" in result.out and f"{expected['validation']['f1']:.4f}" in result.out
    assert_same(evaluate(ner_run, "split=validation", tmp=tmp_path)["validation"], expected["validation"])


def test_evaluate_lora_reproduces_test_metrics(lora_run, tmp_path):
    expected = json.loads((lora_run / "metrics.json").read_text())
    assert json.loads((lora_run / "final" / "llmtune.json").read_text())["peft"] == "lora"
    assert_same(evaluate(lora_run / "final", tmp=tmp_path)["test"], expected["test"])


def test_evaluate_bitfit_reproduces_held_out_validation_and_test(bitfit_run, tmp_path):
    expected = json.loads((bitfit_run / "metrics.json").read_text())
    assert_same(evaluate(bitfit_run / "final", tmp=tmp_path)["test"], expected["test"])
    report = evaluate(bitfit_run / "final", "split=validation", tmp=tmp_path)
    assert report["examples"] == 4 and "validation_split" in report["data"]  # 25% of 16 rows, held out with the run's seed
    assert_same(report["validation"], expected["validation"])


def test_evaluate_defaults_to_validation_without_a_test_split(tmp_path):
    # A pretraining run: no test split, validation held out of the corpus (data.validation_split).
    run = _train(lm_args("clm", tmp_path / "clm", steps=2))
    expected = json.loads((run / "metrics.json").read_text())
    assert "test" not in expected
    report = evaluate(run, tmp=tmp_path)
    assert "test" not in report and "validation_split" in report["data"]
    assert_same(report["validation"], expected["validation"])
    refused = run_cli("evaluate", run, "split=test")
    assert refused.code == 2 and "no test split" in refused.err and "split=validation" in refused.err


def test_evaluate_a_given_file(ner_run, tmp_path):
    expected = json.loads((ner_run / "metrics.json").read_text())
    # The run's validation file, given as a test file: its validation numbers.
    assert_same(evaluate(ner_run, f"data.test_file={ASSETS / 'ner_dev.conll'}", tmp=tmp_path)["test"], expected["validation"])
    other = evaluate(ner_run, f"data.test_file={OTHER_FILE}", tmp=tmp_path)
    assert str(OTHER_FILE) in other["data"] and other["test"]["loss"] != pytest.approx(expected["test"]["loss"], abs=1e-6)


def test_a_final_moved_out_of_its_run_needs_a_file(ner_run, tmp_path):
    expected = json.loads((ner_run / "metrics.json").read_text())
    moved = tmp_path / "moved"
    shutil.copytree(ner_run / "final", moved)
    refused = run_cli("evaluate", moved)
    assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1
    assert "data.test_file=FILE" in refused.err
    # With the file, and no run config (default trainer settings): the run's test numbers.
    assert_same(evaluate(moved, f"data.test_file={TEST_FILE}", tmp=tmp_path)["test"], expected["test"])


def test_evaluate_refuses_unknown_labels(ner_run, tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("Ada B-PER\nLovelace B-ROBOT\n\n")
    result = run_cli("evaluate", ner_run, f"data.test_file={bad}")
    assert result.code == 2 and "B-ROBOT" in result.err and f"{bad} sentence 1" in result.err
    assert len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["splt=test"], "unknown argument 'splt'. Did you mean 'split'?"),
        (["data.tst_file=x.conll"], "Did you mean 'data.test_file'?"),
        (["split=tset"], "Did you mean 'test'?"),
        (["data.validation_file=x.conll", "split=test"], "drop split="),
    ],
)
def test_evaluate_bad_arguments_are_one_line(ner_run, args, message):
    result = run_cli("evaluate", ner_run, *args)
    assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1


def test_evaluate_missing_path_is_one_line(tmp_path):
    result = run_cli("evaluate", tmp_path / "no-such-run")
    assert result.code == 2 and "no such file or directory" in result.err and len(result.err.strip().splitlines()) == 1


def test_evaluate_never_overwrites_the_runs_metrics(ner_run):
    before = (ner_run / "metrics.json").read_bytes()
    result = run_cli("evaluate", ner_run, f"output={ner_run / 'metrics.json'}")
    assert result.code == 2 and "metrics.json" in result.err
    assert (ner_run / "metrics.json").read_bytes() == before


# ------------------------------------------------------------------ serve
def test_serve_predicts_as_the_task_does(ner_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from llmtune.commands.serve import TrainedPredictor
    from llmtune.serving import create_app
    from llmtune.tasks.base import PredictContext
    from llmtune.trained import load_trained

    trained = load_trained(ner_run / "final")
    texts = ["Omar Haddad moved to Lisbon .", "Ada ran"]
    rows = [trained.task.read_input(t, "test") for t in texts]
    expected = trained.task.predict(trained.model, rows, PredictContext(trained.tokenizer))
    assert any(out["entities"] for out in expected)  # something to compare (the tiny model tags words)
    with TestClient(create_app(TrainedPredictor(trained, max_input_chars=1000, batch_size=1))) as client:
        response = client.post("/predict", json={"inputs": texts})
        assert response.status_code == 200, response.text
        got = response.json()["outputs"]
        health = client.get("/health").json()
        bad = client.post("/predict", json={"inputs": ["fine", {"tokens": 3}]})
    for g, e in zip(got, expected, strict=True):
        assert [(x["type"], x["start"], x["end"]) for x in g["entities"]] == [(x["type"], x["start"], x["end"]) for x in e["entities"]]
        assert [x["score"] for x in g["entities"]] == pytest.approx([x["score"] for x in e["entities"]], abs=1e-4)
    assert health["task"] == "ner" and health["model"]["labels"] == trained.task.labels and "B-PER" in health["model"]["labels"]
    assert health["model"]["peft"] == "none" and health["params"] == {}
    assert bad.status_code == 422 and bad.json()["detail"].startswith("inputs[1]:")


def test_serve_refuses_bad_settings_before_loading(tmp_path):
    # Checked before PATH is even looked at: the path does not exist.
    for args, message in ((["port=0"], "port=0"), (["max_batch=0"], "max_batch"), (["prot=1"], "Did you mean 'port'?")):
        result = run_cli("serve", tmp_path / "nope", *args)
        assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1


def test_serve_through_the_cli_entry(ner_run, monkeypatch):
    """`llmtune serve RUN` end to end, with uvicorn's blocking run replaced by a capture of the
    app it was given: defaults to loopback, and the app answers /health and /predict."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from fastapi.testclient import TestClient

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: captured.update(app=app, **kwargs))
    result = run_cli("serve", ner_run, "port=8123", "max_inputs=2")
    assert result.code == 0, result.err[-2000:]
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8123
    text = "Omar Haddad moved to Lisbon ."
    with TestClient(captured["app"]) as client:
        assert client.get("/health").json()["task"] == "ner"
        response = client.post("/predict", json={"inputs": [text]})
        too_many = client.post("/predict", json={"inputs": ["a", "b", "c"]})
    assert response.status_code == 200, response.text
    for entity in response.json()["outputs"][0]["entities"]:
        assert text[entity["start"]:entity["end"]] == entity["text"]
    assert too_many.status_code == 413 and "the limit is 2 per request" in too_many.json()["detail"]  # max_inputs=2 reached the app
