"""The one loss every task trains with: cross-entropy summed over labelled positions.

Summing (not averaging) lets the loop divide by the number of labelled positions in the whole
optimizer step, across micro-batches and processes, so gradient accumulation and multi-process
training give the same update as one big batch (a mean of per-batch means would not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmtune.tasks.base import IGNORE_INDEX


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token (or example) losses; logits [..., C] and labels [...] with -100 ignored."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def count_targets(labels: torch.Tensor) -> int:
    """Labelled positions in a (CPU) label tensor: the loss's denominator."""
    return int((labels != IGNORE_INDEX).sum())
