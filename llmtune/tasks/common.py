"""Helpers several tasks use. Tasks call these; they do not inherit from each other."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

import torch

from llmtune.engine.loss import cross_entropy_sum
from llmtune.errors import UserError
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


def model_logits(model, batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass every task uses unless it defines its own `logits` (the Task protocol):
    logits at every position, and the labels unchanged."""
    return model(**batch).logits, labels


def run_eval(model, dataloader, accelerator, on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None, forward=model_logits) -> float:
    """Forward every batch without gradients; return the mean loss over labelled positions
    across all processes. `on_batch(logits, labels)` sees each batch (for predictions)."""
    model.eval()
    loss_sum = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    with torch.no_grad():
        for batch in dataloader:
            labels = batch.pop("labels")
            logits, labels = forward(model, batch, labels)
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


def pack_best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group items (by index) into bins of at most `capacity` tokens, never splitting an item.

    Best-fit decreasing: longest items first, each into the open bin it fills most tightly
    (a bisect over bins sorted by free space), else into a new bin. Ties break on item and bin
    index, so the result depends only on `lengths`. Bins come out in creation order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted; full bins leave the list
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"item {i} has {size} tokens, more than a bin holds ({capacity}); truncate it first")
        k = bisect.bisect_left(free, (size, -1))
        if k == len(free):
            bins.append([i])
            space, b = capacity - size, len(bins) - 1
        else:
            space, b = free.pop(k)
            bins[b].append(i)
            space -= size
        if space > 0:
            bisect.insort(free, (space, b))
    return bins


def pad_packed(features: list[dict], pad_token_id: int) -> dict:
    """Packed rows -> a batch with `position_ids` that restart at 0 at each sample. Row-end
    padding is a block of its own (positions 0, 1, ...) with ignored labels. The attention
    mask marks real tokens (the engine counts tokens with it) but must not reach the model:
    transformers builds the block-diagonal causal mask from position_ids only when
    attention_mask is None (masking_utils.find_packed_sequence_indices); see packed_forward."""
    length = max(len(f["input_ids"]) for f in features)
    ids, positions, mask = [], [], []
    for f in features:
        pad = length - len(f["input_ids"])
        ids.append(f["input_ids"] + [pad_token_id] * pad)
        positions.append(f["position_ids"] + list(range(pad)))
        mask.append([1] * len(f["input_ids"]) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
        "labels": pad_labels([f["labels"] for f in features], length),
    }


def packed_forward(model, batch: dict, labels: torch.Tensor, flatten: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass for packed batches (a task's `logits` hook). transformers builds the
    block-diagonal mask from position_ids only with no attention mask and no KV cache, so the
    mask is left out (the row-end padding it marked comes after every real token of its row and
    is never labelled) and use_cache=False is passed: the default use_cache=True creates a
    cache object even in training, and with it the packed position ids would be ignored.

    `flatten` joins the batch's rows into one row: flash attention keeps samples apart (its
    variable-length kernel, from the position ids) only within a single row, and then skips the
    padding-free mask altogether. The position ids still restart at every sample."""
    if "position_ids" not in batch:
        return model(**batch).logits, labels
    batch = {k: v for k, v in batch.items() if k != "attention_mask"}
    if flatten:
        batch = {k: v.reshape(1, -1) for k, v in batch.items()}
        labels = labels.reshape(1, -1)
    return model(**batch, use_cache=False).logits, labels
