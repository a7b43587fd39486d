"""Earlier stages as methods need them: their raw data, their rows tokenized for the current
task, and the previous stage's trained model."""

from __future__ import annotations

import torch


def stage_raw(cfg):
    """The raw splits of a stage, loaded as its run loads them (its task picks built-in data)."""
    from llmtune.builders import build_task
    from llmtune.data.load import load_raw

    raw, _ = load_raw(cfg.data, build_task(cfg), cfg.seed)
    return raw


def eval_split_name(raw) -> str:
    """The split the forgetting report scores: test when the stage has one, else validation."""
    return "test" if "test" in raw else "validation"


def tokenized(task, tokenizer, rows, split: str = "continual"):
    """`rows` (a datasets.Dataset of raw rows) checked against `task`'s labels and tokenized by
    it, as one split named `split` (not "train": a task may keep per-split state, e.g. NER's tag
    scheme)."""
    from datasets import DatasetDict

    raw = DatasetDict({split: rows})
    task.check_eval(raw)
    return task.preprocess(raw, tokenizer)[split]


def as_features(data) -> list[dict]:
    """A tokenized split as the list of examples a collator takes."""
    columns = data.column_names
    return [dict(zip(columns, values, strict=True)) for values in zip(*(data[c] for c in columns), strict=True)]


def previous_model(ctx, device="cpu"):
    """The previous stage's trained run (llmtune.trained.TrainedRun), in eval mode."""
    from llmtune.trained import load_trained

    return load_trained(ctx.previous_final, device=str(device))


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The parameters a stage trains, by name (the unwrapped model: the same tensors DDP holds)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
