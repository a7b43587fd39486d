"""Helpers several tasks use. Tasks call these; they do not inherit from each other."""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmtune.errors import UserError
from llmtune.tasks.base import IGNORE_INDEX, model_inputs

log = logging.getLogger("llmtune")


def label_list(values: Iterable) -> list[str]:
    """Sorted distinct labels; numbers sort as numbers ("2" before "10")."""
    distinct = {str(v) for v in values}
    if all(v.lstrip("-").isdigit() for v in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def describe(raw, split: str) -> str:
    """Where a split came from, for error messages: 'data.train_file: /abs/path', ..."""
    return raw[split].info.description or f"the {split} split"


def source_rows(ds) -> Sequence[int]:
    """The 1-based row of the source (the file) each row of a split came from, for error
    messages. data.validation_split shuffles the rows it holds out and those it keeps;
    datasets remembers their original positions (its indices mapping)."""
    indices = getattr(ds, "_indices", None)
    if indices is None:
        return range(1, len(ds) + 1)
    return [i + 1 for i in indices.column(0).to_pylist()]


def check_known_labels(raw, column: str, known: list[str], *, nested: bool, values: dict[str, list] | None = None, unit: str = "example") -> None:
    """Every label in validation/test must be one the model is trained on. `values` holds a
    split's labels when the task rewrote them (e.g. converted a tag scheme); else `column`."""
    known_set = set(known)
    for split in ("validation", "test"):
        if split not in raw:
            continue
        rows = values[split] if values is not None else raw[split][column]
        for row, value in zip(source_rows(raw[split]), rows, strict=True):
            for label in (value if nested else [value]):
                if str(label) not in known_set:
                    raise UserError(
                        f"{describe(raw, split)} {unit} {row} has label '{label}', which the training data never uses "
                        f"(training labels: {', '.join(known[:20])}); fix the label or add training examples with it."
                    )


def check_single_labels(raw, column: str) -> None:
    """One label per row. A null or empty label, or a list of them, would silently become a
    class of its own ("None", "", "['a', 'b']")."""
    for split, ds in raw.items():
        for row, value in zip(source_rows(ds), ds[column], strict=True):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise UserError(
                    f"{describe(raw, split)} row {row} has no {column} ({'null' if value is None else 'empty'}); "
                    f"give it a {column} or remove the row."
                )
            if isinstance(value, (list, dict)):
                raise UserError(
                    f"{describe(raw, split)} row {row} has {column} {value!r:.60}, not a single {column}; "
                    f"this task takes one {column} per row (text or a number)."
                )


def warn_single_class(raw, labels: list[str], what: str) -> None:
    """Training on one class teaches nothing (the prediction is always right); say so."""
    if len(labels) == 1:
        log.warning(
            "%s: every training example has the %s '%s', so the model cannot learn to tell classes apart; "
            "add examples of the other classes", describe(raw, "train"), what, labels[0],
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
    return model(**model_inputs(batch)).logits, labels


@dataclass(frozen=True)
class EvalLoss:
    loss: float      # per labelled token over the whole split, each example counted once
    stderr: float    # its standard error, examples as the sampling unit
    examples: int


def run_eval(model, dataloader, accelerator, on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None, forward=model_logits) -> EvalLoss:
    """Forward every batch without gradients; return the loss over labelled positions of the
    whole split. `on_batch(logits, labels)` sees each batch (for predictions).

    Each example's loss sum and labelled-position count go through gather_for_metrics, which
    drops the examples accelerate repeats to even out the last batches across processes; the
    loss is then one division of the totals. So it is the same for any number of processes,
    batch size or length grouping (a sum over processes would count the repeats; a mean of
    per-batch means would weigh short batches up)."""
    model.eval()
    sums, counts = [], []
    try:
        with torch.no_grad():
            for batch in dataloader:
                labels = batch.pop("labels")
                logits, scored = forward(model, batch, labels)
                loss_sums, targets = accelerator.gather_for_metrics(per_example_loss(logits, scored, labels))
                sums.append(loss_sums)
                counts.append(targets)
                if on_batch is not None:
                    on_batch(logits, scored)
    finally:
        model.train()
    if not sums:
        return EvalLoss(0.0, 0.0, 0)
    return loss_stats(torch.cat(sums), torch.cat(counts))


def eval_argmax(model, loader, ctx, forward) -> tuple:
    """(gold labels, argmax predictions, EvalLoss) over a loader whose logits hold one row of
    class scores per example (sequence-level tasks), gathered from every process."""
    preds, golds = [], []

    def collect(logits, labels):
        p, g = ctx.accelerator.gather_for_metrics((logits.argmax(-1), labels))
        preds.append(p.cpu())
        golds.append(g.cpu())

    loss = run_eval(model, loader, ctx.accelerator, collect, forward=forward)
    return torch.cat(golds).numpy(), torch.cat(preds).numpy(), loss


def per_example_loss(logits: torch.Tensor, scored: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum, labelled positions) per example, i.e. per row of `labels`. `scored` are the
    labels a forward hook returned with `logits`: the same labelled positions in the same
    row-major order, maybe gathered (MLM scores masked positions only) or flattened (packing)."""
    targets = (labels != IGNORE_INDEX).reshape(len(labels), -1).sum(dim=1)
    flat = scored.reshape(-1)
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=IGNORE_INDEX, reduction="none")
    losses = losses[flat != IGNORE_INDEX]
    if losses.numel() != int(targets.sum()):
        raise ValueError(f"the forward scored {losses.numel()} labelled positions for {int(targets.sum())} labelled in the batch; a task's `logits` hook must keep them")
    # float64 where the device has it: sums over a large split stay exact to well below 1e-6.
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    rows = torch.repeat_interleave(torch.arange(len(targets), device=targets.device), targets)
    sums = torch.zeros(len(targets), dtype=dtype, device=losses.device).index_add_(0, rows.to(losses.device), losses.to(dtype))
    return sums, targets


def loss_stats(sums: torch.Tensor, counts: torch.Tensor) -> EvalLoss:
    """Loss per labelled position from per-example sums and counts, with the standard error of
    this ratio (delta method) taking examples, not tokens, as independent: the tokens of one
    example are not independent draws."""
    total = counts.sum().to(sums.dtype)
    loss = sums.sum() / total.clamp(min=1)
    n = len(sums)
    spread = ((sums - loss * counts) ** 2).sum() * n / max(n - 1, 1)
    stderr = spread.sqrt() / total.clamp(min=1)
    return EvalLoss(float(loss), float(stderr), n)


def proportion_stderr(value: float, n: int) -> float:
    """Standard error of an accuracy- or F1-like score over `n` examples, sqrt(p(1-p)/n), with
    p shrunk towards 1/2 as (p*n + 2) / (n + 4) (Agresti-Coull) so that a score of 0 or 1 is not
    given zero noise."""
    if n <= 0:
        return 0.0
    p = (value * n + 2) / (n + 4)
    return math.sqrt(p * (1 - p) / (n + 4))


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


def pack_samples(samples: list[tuple[list[int], list[int]]], max_length: int, split: str) -> dict:
    """(input_ids, labels) samples -> columns of rows of up to `max_length` tokens (pack_best_fit),
    with position ids restarting at 0 at each sample (what pad_packed and packed_forward read)."""
    bins = pack_best_fit([len(ids) for ids, _ in samples], max_length)
    rows: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for members in bins:
        ids, labels, positions = [], [], []
        for i in members:
            ids += samples[i][0]
            labels += samples[i][1]
            positions += range(len(samples[i][0]))
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["position_ids"].append(positions)
    tokens = sum(len(ids) for ids in rows["input_ids"])
    if bins:
        log.info("%s: packed %d samples into %d rows of up to %d tokens (%.1f%% full)", split, len(samples), len(bins), max_length, 100 * tokens / (len(bins) * max_length))
    return rows


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
    batch = model_inputs(batch)
    if "position_ids" not in batch:
        return model(**batch).logits, labels
    batch = {k: v for k, v in batch.items() if k != "attention_mask"}
    if flatten:
        batch = {k: v.reshape(1, -1) for k, v in batch.items()}
        labels = labels.reshape(1, -1)
    return model(**batch, use_cache=False).logits, labels
