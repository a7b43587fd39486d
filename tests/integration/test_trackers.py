"""Experiment trackers (tracker=..., conf/tracker/): tiny runs, then what each tracker wrote is
read back with the tracker's own reader (offline) and compared with train_log.jsonl."""

from __future__ import annotations

import glob
import importlib.util
import json
import struct

import pytest
import yaml

from conftest import cls_args, ner_args, run_cli


def _train_log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _train_log(run) if r["type"] == "train"}


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    """One run logging to TensorBoard and MLflow at once."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run = tmp_path_factory.mktemp("trackers") / "both"
    result = run_cli(*ner_args(run), "tracker=[tensorboard,mlflow]", "callbacks=quiet")
    assert result.code == 0, result.text[-3000:]
    return run


def test_tensorboard_events_hold_the_log_the_eval_metrics_and_the_hparams(both_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(both_run / "tensorboard" / "llmtune-ner"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    expected = _losses(both_run)
    assert sorted(logged) == sorted(expected) == [1, 2, 3, 4]
    assert logged == pytest.approx(expected, rel=1e-6)  # event files store float32
    evals = {r["step"]: r["f1"] for r in _train_log(both_run) if r["type"] == "eval"}
    assert {e.step: e.value for e in events.Scalars("validation/f1")} == pytest.approx(evals, rel=1e-6)
    final = json.loads((both_run / "metrics.json").read_text())
    assert events.Scalars("final/validation/f1")[-1].value == pytest.approx(final["validation"]["f1"], rel=1e-6)

    # add_hparams writes its own event file in a sub-folder: the resolved config, flattened.
    hparams = {}
    for folder in glob.glob(str(both_run / "tensorboard" / "llmtune-ner" / "*" / "")):
        sub = EventAccumulator(folder)
        sub.Reload()
        if not _has_plugin(sub, "hparams"):
            continue  # accelerate's hparams.yml folder
        for content in sub.PluginTagToContent("hparams").values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                hparams.update({k: v.number_value or v.string_value for k, v in data.session_start_info.hparams.items()})
    assert hparams["trainer.batch_size"] == 4
    assert hparams["task.name"] == "ner"


def _has_plugin(accumulator, name: str) -> bool:
    try:
        accumulator.PluginTagToContent(name)
    except KeyError:
        return False
    return True


def test_mlflow_file_store_holds_params_and_the_metric_history(both_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{both_run}/mlruns")
    experiment = client.get_experiment_by_name("llmtune-ner")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == both_run.name
    assert run.data.params["trainer.batch_size"] == "4"
    assert run.data.params["trainer.max_steps"] == "4"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert history == pytest.approx(_losses(both_run))
    final = json.loads((both_run / "metrics.json").read_text())
    assert run.data.metrics["final/validation/f1"] == pytest.approx(final["validation"]["f1"])
    assert run.data.metrics["final/train/steps"] == final["train"]["steps"]


def _wandb_records(path):
    """The records of a .wandb file: a LevelDB-style log (32 KiB blocks, 7-byte chunk headers)
    after a 7-byte ':W&B' header, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, chunk = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a header: the block is padded
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def test_wandb_runs_offline_into_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "wb"
    result = run_cli(*cls_args(run, steps=2), "tracker=wandb", "callbacks=quiet")
    assert result.code == 0, result.text[-3000:]
    (path,) = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, config, name = {}, {}, None
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}  # "a/b" keys are nested
            history.setdefault(items.get("_step"), {}).update(items)
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":
            name = record.run.display_name
    assert name == "wb"
    assert config["trainer.batch_size"] == 4
    assert {step: h["train/loss"] for step, h in history.items() if "train/loss" in h} == pytest.approx(_losses(run))
    assert "validation/accuracy" in history[2]


def test_trackio_logs_locally(tmp_path, monkeypatch):
    if importlib.util.find_spec("trackio") is None:
        pytest.skip("trackio is not installed")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "store"))  # read when trackio is imported
    import trackio.utils

    if trackio.utils.TRACKIO_DIR != tmp_path / "store":
        pytest.skip("trackio was imported earlier in this process, with another store")
    from trackio.sqlite_storage import SQLiteStorage

    run = tmp_path / "tio"
    result = run_cli(*cls_args(run, steps=2), "tracker=trackio", "callbacks=quiet")
    assert result.code == 0, result.text[-3000:]
    assert SQLiteStorage.get_runs("llmtune-classification") == ["tio"]
    logs = SQLiteStorage.get_logs("llmtune-classification", "tio")
    assert {r["step"]: r["train/loss"] for r in logs if "train/loss" in r} == pytest.approx(_losses(run))
    assert SQLiteStorage.get_run_config("llmtune-classification", "tio")["trainer.batch_size"] == 4


def test_sweep_jobs_are_named_by_their_swept_overrides(tmp_path):
    pytest.importorskip("mlflow")
    sweep = tmp_path / "sweep"
    args = [a for a in cls_args(sweep, steps=2) if a != "finetune"]
    result = run_cli("finetune", "-m", "optimizer.lr=1e-4,3e-4", *args, "tracker=mlflow", "callbacks=quiet")
    assert result.code == 0, result.text[-3000:]
    from mlflow.tracking import MlflowClient

    names = set()
    for job in ("0", "1"):
        client = MlflowClient(tracking_uri=f"file:{sweep / job}/mlruns")
        (run,) = client.search_runs([client.get_experiment_by_name("llmtune-classification").experiment_id])
        names.add(run.info.run_name)
        assert yaml.safe_load((sweep / job / "config.yaml").read_text())["optimizer"]["lr"] == float(run.data.params["optimizer.lr"])
    # Only the swept key names the run, not the fixed overrides (trainer.max_steps=2 ...).
    assert names == {"0 optimizer.lr=0.0001", "1 optimizer.lr=0.0003"}  # as Hydra writes the values


@pytest.mark.parametrize("choice, wrong, guess", [("tracker=tensorbord", "tensorbord", "tensorboard"),
                                                  ("tracker=[tensorboard,mlfow]", "mlfow", "mlflow")])
def test_a_misspelt_tracker_gets_a_did_you_mean(tmp_path, choice, wrong, guess):
    result = run_cli(*ner_args(tmp_path / "run"), choice)
    assert result.code == 2
    (line,) = result.err.strip().splitlines()
    assert f"'{wrong}' is not an option of config group 'tracker'" in line and f"Did you mean '{guess}'?" in line
    assert not (tmp_path / "run").exists()


def test_several_trackers_compose_under_their_own_keys(tmp_path):
    from hydra import compose, initialize_config_dir

    from llmtune.config import preflight
    from llmtune.paths import conf_dir

    overrides = ["tracker=[tensorboard,mlflow]", "tracker.mlflow.uri=http://localhost:5000", f"output_dir={tmp_path / 'run'}"]
    preflight(str(conf_dir()), "finetune", overrides)  # accepted: raises nothing
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="finetune", overrides=overrides)
        default = compose(config_name="finetune")
    assert sorted(cfg.tracker) == ["mlflow", "tensorboard"]
    assert cfg.tracker.mlflow.env.MLFLOW_TRACKING_URI == "http://localhost:5000"
    assert cfg.callbacks.tracker._target_ == "llmtune.engine.trackers.TrackerCallback"
    assert not default.tracker and "tracker" not in default.callbacks  # tracker=none


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    run = tmp_path / "run"
    result = run_cli(*ner_args(run), "tracker=[tensorboard,mlflow]")
    assert result.code == 2
    (line,) = result.err.strip().splitlines()
    assert "tracker=mlflow" in line and "pip install 'llmtune[mlflow]'" in line
    assert not run.exists()  # refused before anything was written
