"""Plots, the model card and `llmtune plot`, through the real CLI on tiny runs.

- a run writes plots/ (loss, lr, one PNG per validation metric) unless callbacks.plots=null;
- final/README.md loads with huggingface_hub.ModelCard.load, names the library and metrics in
  its front matter, and its body holds the test metric from metrics.json, the command line and
  the loss plot (copied next to it); `llmtune export` copies it, marked as merged;
- `llmtune plot RUN RUN output=DIR` overlays runs; a path that is no run is one line, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ASSETS, ner_args, run_cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("card") / "ner-lora"
    result = run_cli(*ner_args(run), "peft=lora", f"data.test_file={ASSETS / 'ner_dev.conll'}")
    assert result.code == 0, result.text
    return run


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG and path.stat().st_size > 5000  # drawn, not an empty canvas


def test_run_writes_plots(lora_run):
    plots = lora_run / "plots"
    names = sorted(p.name for p in plots.iterdir())
    metrics = json.loads((lora_run / "metrics.json").read_text())
    expected = {"loss.png", "lr.png", *(f"eval_{k}.png" for k in metrics["validation"] if k != "loss" and not k.endswith("_stderr"))}
    assert set(names) == expected
    assert all(_is_png(plots / n) for n in names)


def test_model_card_loads_and_reports_the_run(lora_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(lora_run / "final" / "README.md")
    metrics = json.loads((lora_run / "metrics.json").read_text())
    main = metrics["main_metric"]
    assert card.data.library_name == "peft"
    assert {"llmtune", "ner", "lora"} <= set(card.data.tags)
    assert main in card.data.metrics
    assert f"| {metrics['test'][main]:.4f} |" in card.text  # the test column of the results table
    assert "trainer.max_steps=4" in card.text and "peft=lora" in card.text and card.text.count("llmtune finetune task=ner") == 1
    assert "![training and validation loss](loss.png)" in card.text and _is_png(lora_run / "final" / "loss.png")


def test_export_copies_the_card_as_merged(lora_run, tmp_path):
    from huggingface_hub import ModelCard

    result = run_cli("export", lora_run / "final", f"output={tmp_path / 'merged'}")
    assert result.code == 0, result.text
    card = ModelCard.load(tmp_path / "merged" / "README.md")
    original = ModelCard.load(lora_run / "final" / "README.md")
    assert card.data.library_name == "transformers" and "merged" in card.data.tags
    assert "merged into its base" in card.text and original.text.strip() in card.text
    assert (tmp_path / "merged" / "loss.png").read_bytes() == (lora_run / "final" / "loss.png").read_bytes()


def test_plots_off(tmp_path):
    run = tmp_path / "run"
    result = run_cli(*ner_args(run, steps=2), "callbacks.plots=null")
    assert result.code == 0, result.text
    assert not (run / "plots").exists() and not (run / "final" / "loss.png").exists()
    text = (run / "final" / "README.md").read_text()
    assert "Training curves" not in text and "## Results" in text


def _fake_run(path: Path, losses: list[float], f1: list[float]) -> Path:
    path.mkdir(parents=True)
    lines = [{"type": "train", "step": i + 1, "loss": v, "lr": 1e-3 / (i + 1)} for i, v in enumerate(losses)]
    lines += [{"type": "eval", "split": "validation", "step": 2 * (i + 1), "f1": v, "loss": 1.0} for i, v in enumerate(f1)]
    (path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_plot_overlays_runs(tmp_path):
    a = _fake_run(tmp_path / "a", [2.0, 1.5, 1.2, 1.0], [0.2, 0.4])
    b = _fake_run(tmp_path / "b", [2.1, 1.9, 1.7, 1.6], [0.1, 0.3])
    out = tmp_path / "out"
    result = run_cli("plot", a, b / "final", f"output={out}")  # a run's final/ stands for its run
    assert result.code == 0, result.text
    assert sorted(p.name for p in out.iterdir()) == ["eval_f1.png", "loss.png", "lr.png"]
    assert all(_is_png(p) for p in out.iterdir())
    only = run_cli("plot", a, b, f"output={tmp_path / 'f1'}", "metric=f1")
    assert only.code == 0 and (tmp_path / "f1" / "eval_f1.png").is_file()


@pytest.mark.parametrize("extra", [["metric=bleu"], []])
def test_plot_refuses_in_one_line(tmp_path, extra):
    run = _fake_run(tmp_path / "a", [2.0, 1.0], [0.5])
    paths = [run] if extra else [run, tmp_path]  # tmp_path holds no train_log.jsonl
    result = run_cli("plot", *paths, f"output={tmp_path / 'out'}", *extra)
    assert result.code == 2
    message = result.err.strip()
    assert len(message.splitlines()) == 1 and ("bleu" in message if extra else "not a run directory" in message)
    assert not (tmp_path / "out").exists()
