"""From one stage to the next: the labels a stage keeps and the weights it starts from.

- Labels (shared heads): the earlier labels keep their ids and the labels new in this stage's
  data follow, so the classifier only grows (class-incremental learning).
- Weights: every parameter of the previous stage's model whose name and shape match is
  copied; a grown head gets the old rows copied and keeps its freshly initialised new rows.
  With a head per task, the head is not copied: the stage starts its own.
"""

from __future__ import annotations

import logging

import torch

from llmtune.peft.heads import task_head_names

log = logging.getLogger("llmtune")


def merged_labels(previous: list[str], current: list[str]) -> list[str]:
    """`previous` in its order (ids kept), then the labels of `current` not in it."""
    return [*previous, *(label for label in current if label not in previous)]


def keep_label_ids(task, previous: list[str]) -> None:
    """Give `task` (after setup) the merged label list, through its own state hooks."""
    merged = merged_labels(list(previous), list(task.labels))
    if merged != list(task.labels):
        task.load_state({**task.state(), "labels": merged})


def head_names(model) -> list[str]:
    """The task head modules of a (maybe PEFT-wrapped) model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return task_head_names(base)


def in_head(key: str, heads: list[str]) -> bool:
    return any(part in heads for part in key.split("."))


def copy_weights(source: dict[str, torch.Tensor], model, skip_heads: bool = False) -> dict[str, int]:
    """Copy `source` (a state dict) into `model` in place: equal shapes whole, a grown first
    dimension (a head's rows) in part. Returns counts: copied, grown, kept (not in source or
    of another shape, or a head when `skip_heads`)."""
    heads = head_names(model) if skip_heads else []
    counts = {"copied": 0, "grown": 0, "kept": 0}
    with torch.no_grad():
        for key, target in model.state_dict(keep_vars=True).items():
            old = source.get(key)
            if old is None or in_head(key, heads) or old.ndim != target.ndim:
                counts["kept"] += 1
                continue
            if old.shape == target.shape:
                target.copy_(old.to(target.dtype))
                counts["copied"] += 1
            elif old.ndim >= 1 and old.shape[1:] == target.shape[1:] and old.shape[0] < target.shape[0]:
                target[: old.shape[0]].copy_(old.to(target.dtype))  # old classes keep their rows
                counts["grown"] += 1
            else:
                counts["kept"] += 1
    return counts


def anchored(param: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """The part of `param` an anchor of an earlier stage covers (the old rows of a grown head)."""
    if param.shape == anchor.shape:
        return param
    return param[tuple(slice(0, n) for n in anchor.shape)]
