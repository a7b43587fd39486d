"""Helpers several tasks use. Tasks call these; they do not inherit from each other."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from llmtune.errors import UserError
from llmtune.engine.loss import cross_entropy_sum
from llmtune.tasks.base import IGNORE_INDEX


def label_list(values: Iterable) -> list[str]:
    """Sorted distinct labels; numbers sort as numbers ("2" before "10")."""
    distinct = {str(v) for v in values}
    if all(v.lstrip("-").isdigit() for v in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def check_known_labels(raw, column: str, known: list[str], *, nested: bool) -> None:
    """Every label in validation/test must be one the model is trained on."""
    known_set = set(known)
    for split in ("validation", "test"):
        if split not in raw:
            continue
        for row, value in enumerate(raw[split][column], start=1):
            for label in (value if nested else [value]):
                if str(label) not in known_set:
                    where = raw[split].info.description or f"the {split} split"
                    raise UserError(
                        f"{where}: example {row} has label '{label}', which the training data never uses "
                        f"(training labels: {', '.join(known[:20])}); fix the label or add training examples with it."
                    )


def label_maps(labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def run_eval(model, dataloader, accelerator, on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> float:
    """Forward every batch without gradients; return the mean loss over labelled positions
    across all processes. `on_batch(logits, labels)` sees each batch (for predictions)."""
    model.eval()
    loss_sum = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    with torch.no_grad():
        for batch in dataloader:
            labels = batch.pop("labels")
            logits = model(**batch).logits
            loss_sum += cross_entropy_sum(logits, labels)
            count += (labels != IGNORE_INDEX).sum()
            if on_batch is not None:
                on_batch(logits, labels)
    model.train()
    totals = accelerator.reduce(torch.stack([loss_sum, count]), reduction="sum")
    return float(totals[0] / totals[1].clamp(min=1))


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # capped: exp of a huge early loss overflows to inf


def pad_labels(labels: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([row + [IGNORE_INDEX] * (length - len(row)) for row in labels], dtype=torch.long)


def pad_inputs(tokenizer, features: list[dict], keys: tuple[str, ...]) -> dict:
    """Dynamic padding to the longest example in the batch, on the right, with an attention
    mask. Written out rather than `tokenizer.pad`, which costs more than a small model's step."""
    length = max(len(f["input_ids"]) for f in features)
    fill = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
    batch = {}
    for key in keys:
        if key not in features[0] or key == "attention_mask":
            continue
        batch[key] = torch.tensor([f[key] + [fill.get(key, 0)] * (length - len(f[key])) for f in features], dtype=torch.long)
    batch["attention_mask"] = torch.tensor([[1] * len(f["input_ids"]) + [0] * (length - len(f["input_ids"])) for f in features], dtype=torch.long)
    return batch


def pack_into_blocks(token_lists: list[list[int]], block: int) -> list[list[int]]:
    """Concatenate token lists and cut them into blocks of `block` tokens. The last, shorter
    block is kept (padding handles it) so that small corpora are not silently dropped."""
    flat = [t for tokens in token_lists for t in tokens]
    return [flat[i : i + block] for i in range(0, len(flat), block)]
