"""`llmtune evaluate PATH`: a trained run's metrics on a split (llmtune/evaluating.py)."""

from __future__ import annotations

from pathlib import Path

from llmtune.commands._args import describe
from llmtune.prompting import KEYS as PROMPTING_KEYS

HELP = "score a trained run (final/, run dir or checkpoint) on its test or validation split, or a file"
KEYS = {
    "split": (("test", "validation"), None, "the run's split to score (default: test when the run has one, else validation)"),
    "data.test_file": (Path, None, "score this file (the run's data format and columns) instead of the run's test split"),
    "data.validation_file": (Path, None, "score this file instead of the run's validation split"),
    "output": (Path, None, "also write the metrics to this JSON file (and generated text, for tasks that generate, to NAME.predictions.jsonl beside it)"),
    "batch_size": (int, None, "examples per forward pass (default: the run's trainer.eval_batch_size)"),
    "device": (("auto", "cpu", "cuda"), "auto", "auto: cuda when a GPU is visible, else cpu"),
}
USAGE = f"""\
usage: llmtune evaluate PATH [split=test|validation] [data.test_file=FILE] [output=FILE] [key=value ...]

PATH is a run's final/, a run directory (its final/, else its newest checkpoint) or a
checkpoints/step-N folder. The split is loaded as training loaded it (the run's config.yaml:
its files, hub dataset or built-in data, validation_split with the run's seed) and scored with
the labels and code of training, so the run's own test split gives metrics.json's numbers.
A given file is scored whole; a final/ moved out of its run directory needs one.

arguments:
{describe(KEYS)}

examples:
  llmtune evaluate runs/ner
  llmtune evaluate runs/ner/final split=validation
  llmtune evaluate runs/ner/checkpoints/step-200 data.test_file=new.conll output=new_metrics.json

prompting baselines (no training; llmtune/prompting.py): with prompting=zero_shot|few_shot|cloze,
a model that was not trained on the task is prompted and scored with the task's metric. PATH
is then optional (a trained final/ to prompt); model=..., task=..., data.* choose the rest
(default model=smollm2; cloze: a masked LM, default minilm).

usage: llmtune evaluate [PATH] prompting=zero_shot|few_shot|cloze [model=...] [task=...] [key=value ...]

arguments:
{describe(PROMPTING_KEYS)}

examples:
  llmtune evaluate prompting=zero_shot task=classification data.validation_file=dev.jsonl
  llmtune evaluate prompting=few_shot prompting.k=4 prompting.seeds=[0,1,2] task=ner data.train_file=train.conll data.test_file=test.conll
  llmtune evaluate prompting=cloze model=tiny_bert prompting.verbalizer='{{positive: great, negative: terrible}}'
  llmtune evaluate runs/sft/final prompting=zero_shot task=classification data.validation_file=dev.jsonl
"""


def main(argv: list[str]) -> None:
    from llmtune import prompting
    from llmtune.commands._args import parse
    from llmtune.errors import UserError
    from llmtune.evaluating import eval_split, make_accelerator, score
    from llmtune.trained import load_trained, locate
    from llmtune.ui.console import metrics_table, print_table, setup_logging

    if prompting.is_prompting(argv):  # a baseline without training: llmtune/prompting.py
        return prompting.main(argv)
    args = parse(argv, KEYS, verb="evaluate", positional="PATH")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"evaluate: batch_size={args.batch_size}: must be 1 or more.")
    files = {split: args[f"data.{split}_file"] for split in ("test", "validation") if args[f"data.{split}_file"] is not None}
    _, _, run_dir = locate(args.path)
    _check_output(args.output, run_dir)
    accelerator = make_accelerator(args.device, _run_precision(run_dir))
    setup_logging(accelerator.is_main_process)
    trained = load_trained(args.path, accelerator.device)
    raw = eval_split(trained, args.split, files)
    (split,) = raw.keys()
    metrics = score(trained, raw, accelerator, args.batch_size, predictions_file(args.output))
    if not accelerator.is_main_process:
        return
    task, source = trained.task, raw[split].info.description
    print_table(metrics_table(f"evaluate {task.name}", {split: metrics}, task.main_metric))
    print(f"model: {trained.path} ({trained.kind})\ndata: {source} ({len(raw[split])} examples)")
    if args.output is not None:
        report = {"task": task.name, "main_metric": task.main_metric, "greater_is_better": task.greater_is_better,
                  "model": str(trained.path), "kind": trained.kind, "data": source, "examples": len(raw[split]), split: metrics}
        _write_json(args.output, report)
        print(f"metrics: {args.output}")
        if predictions_file(args.output).is_file():
            print(f"predictions: {predictions_file(args.output)}")


def predictions_file(output: Path | None) -> Path | None:
    """Where the per-example predictions go (tasks that report them): beside output=FILE, as
    FILE's name with .predictions.jsonl for its suffix; None without an output."""
    return None if output is None else output.with_name(f"{output.stem}.predictions.jsonl")


def _check_output(output: Path | None, run_dir: Path | None) -> None:
    """Before anything loads: output= must be a file, and never the run's own metrics.json."""
    from llmtune.errors import UserError

    if output is None:
        return
    if output.is_dir():
        raise UserError(f"evaluate: output={output} is a directory; name a file, e.g. output={output / 'metrics.json'}.")
    if run_dir is not None and output.resolve() == (run_dir / "metrics.json").resolve():
        raise UserError(f"evaluate: output={output} is the run's own metrics.json, which training wrote; name another file.")


def _run_precision(run_dir: Path | None) -> str:
    """trainer.precision of the run's config.yaml ("no" without one): evaluation autocasts as training did."""
    from omegaconf import OmegaConf

    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return "no"
    return str(OmegaConf.select(OmegaConf.load(run_dir / "config.yaml"), "trainer.precision", default="no"))


def _write_json(path: Path, report: dict) -> None:
    """Written whole under a temporary name, then renamed: no half-written file on failure."""
    import json
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_text(json.dumps(report, indent=1) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
