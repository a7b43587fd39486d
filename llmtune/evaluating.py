"""Scoring a trained run on one split (`llmtune evaluate`), with the code training scores with.

The split is the run's own, loaded from its config.yaml as training loaded it (files, a hub
dataset or built-in data; data.validation_split with the run's seed; data.max_eval_samples), or
a data file given on the command line (scored whole). The task keeps the labels it was trained
with (final/llmtune.json, restored by load_trained): `check_eval` checks the data against them
where training calls `setup`, which would rebuild them from this data. Tokenizing (`tokenize`,
i.e. task.preprocess), batching (`eval_loader`) and the metrics (`task.evaluate` with
`eval_context`) are training's own, so on the run's test split the numbers are metrics.json's.

    accelerator = make_accelerator("auto", "no")
    trained = load_trained("runs/ner/final", accelerator.device)
    raw = eval_split(trained, split=None, files={})      # DatasetDict with the one split
    metrics = score(trained, raw, accelerator)
"""

from __future__ import annotations

import logging
from pathlib import Path

from llmtune.errors import UserError

log = logging.getLogger("llmtune")
SPLITS = ("test", "validation")


def choose_split(split: str | None, files: dict[str, Path]) -> str | None:
    """The split to score: the one whose file is given, else `split`; None means the run's
    test split when it has one, else its validation split. `files`: split -> file."""
    if len(files) > 1:
        raise UserError("evaluate: give one of data.test_file and data.validation_file; each call scores one split.")
    if not files:
        return split
    given = next(iter(files))
    if split not in (None, given):
        raise UserError(f"evaluate: data.{given}_file is scored as the {given} split, but split={split} is given; drop split=, or give data.{split}_file=FILE instead.")
    return given


def eval_split(trained, split: str | None, files: dict[str, Path]):
    """A DatasetDict holding the one raw split to score (see choose_split)."""
    from datasets import DatasetDict

    from llmtune.data.load import load_raw, read_split

    split = choose_split(split, files)
    cfg = trained.cfg
    if files:
        renames = dict(cfg.data.columns or {}) if cfg is not None else {}  # the run's column mapping
        return DatasetDict({split: read_split(files[split], f"{split}_file", trained.task, renames)})
    if cfg is None:
        raise UserError(
            f"evaluate: {trained.path} is not inside its run directory (no config.yaml beside it), so the data it was trained on "
            "is unknown; give the data to score: data.test_file=FILE (or data.validation_file=FILE)."
        )
    raw, _ = load_raw(cfg.data, trained.task, cfg.seed)
    split = split or ("test" if "test" in raw else "validation")
    if split not in raw:
        others = [s for s in SPLITS if s in raw]
        instead = f"score split={others[0]}, or " if others else ""
        raise UserError(f"evaluate: the run {trained.run_dir} has no {split} split (its data has: {', '.join(raw)}); {instead}give data.{split}_file=FILE.")
    return DatasetDict({split: raw[split]})


def make_accelerator(device: str, precision: str = "no"):
    """An Accelerator as training builds one: CPU unless a CUDA GPU is used (device=auto|cpu|cuda),
    and the run's mixed precision (trainer.precision; fp16 autocast only on a GPU)."""
    from accelerate import Accelerator

    from llmtune.trained import resolve_device

    cpu = resolve_device(device, "evaluate") == "cpu"
    if cpu and precision == "fp16":
        precision = "no"
    return Accelerator(cpu=cpu, mixed_precision=precision)


def eval_settings(trained, batch_size: int | None):
    """The trainer settings the eval loader reads: the run's (padding multiple, compile's
    bucketing), else conf/'s defaults; `batch_size` replaces trainer.eval_batch_size."""
    from omegaconf import OmegaConf

    from llmtune.paths import conf_dir

    if trained.cfg is not None:
        tcfg = OmegaConf.create(OmegaConf.to_container(trained.cfg.trainer, resolve=True))
    else:
        tcfg = OmegaConf.load(conf_dir() / "trainer" / "default.yaml")
    if batch_size is not None:
        tcfg.eval_batch_size = batch_size
    return tcfg


def score(trained, raw, accelerator, batch_size: int | None = None, predictions_file: Path | None = None) -> dict[str, float]:
    """The task's metrics over the one split of `raw` (a DatasetDict from eval_split). The
    predictions a task reports (generated text) are logged, a few, and written whole to
    `predictions_file` when given (llmtune.engine.predictions)."""
    from omegaconf import OmegaConf

    from llmtune.data.load import tokenize
    from llmtune.engine import predictions
    from llmtune.engine.loop import eval_context, eval_loader

    task, tokenizer = trained.task, trained.tokenizer
    (split,) = raw.keys()
    task.check_eval(raw)
    # Not cached: training's cache entry holds all of its splits under a key of all of them.
    # num_proc as in training: LM tasks pack their blocks within each shard.
    num_proc = trained.cfg.data.get("num_proc") if trained.cfg is not None else None
    data_cfg = OmegaConf.create({"cache": False, "cache_dir": "", "num_proc": num_proc})
    data = tokenize(raw, task, tokenizer, data_cfg, "", accelerator)[split]
    model = accelerator.prepare_model(trained.model, evaluation_mode=True)  # autocast as in training
    loader, order = eval_loader(task, tokenizer, data, eval_settings(trained, batch_size), accelerator)
    ctx = eval_context(task, tokenizer, raw[split], order, accelerator)
    metrics = task.evaluate(model, loader, ctx)
    model.eval()  # evaluate leaves the model in training mode, as the loop expects
    predictions.hand_over(ctx, split, predictions_file, accelerator.is_main_process)
    return metrics
