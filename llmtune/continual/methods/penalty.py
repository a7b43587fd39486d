"""Parameter penalties towards an earlier stage's weights (EWC, L2-SP), as Task loss terms.

A penalty P(theta) does not depend on the batch. The loss term returns P x (labelled positions
of the micro-batch), summed like the task's loss: the engine divides the step's sum by the
step's labelled positions, across micro-batches and processes, so the step's objective is
exactly mean task loss + P, for any accumulation and any number of processes.
"""

from __future__ import annotations

import torch

from llmtune.continual.transfer import anchored, head_names, in_head
from llmtune.tasks.base import IGNORE_INDEX


def quadratic_penalty(params: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None, lam: float) -> torch.Tensor:
    """lam/2 * sum_n w_n (theta_n - anchor_n)^2 over the anchored parameters; w = 1 without
    weights (L2-SP), the Fisher diagonal with them (EWC)."""
    total = None
    for name, anchor in anchors.items():
        diff = anchored(params[name], anchor) - anchor.to(params[name].device)
        term = diff.pow(2)
        if weights is not None:
            term = term * weights[name].to(diff.device)
        total = term.sum() if total is None else total + term.sum()
    if total is None:
        return torch.zeros(())
    return 0.5 * lam * total


def penalty_term(params: dict[str, torch.Tensor], anchors: dict, weights: dict | None, lam: float):
    """The penalty as a Task loss term (llmtune.tasks.base: loss_terms)."""

    def term(model, batch, logits, labels):
        targets = (labels != IGNORE_INDEX).sum()
        return quadratic_penalty(params, anchors, weights, lam).to(logits.device) * targets

    return term


def anchors_from(previous, current: dict[str, torch.Tensor], skip_heads: bool) -> dict[str, torch.Tensor]:
    """The previous model's values of the parameters the current stage trains (by name), the
    head left out when each task has its own."""
    heads = head_names(previous) if skip_heads else []
    source = dict(previous.named_parameters())
    out = {}
    for name, param in current.items():
        old = source.get(name)
        if old is None or in_head(name, heads) or old.ndim != param.ndim or any(o > p for o, p in zip(old.shape, param.shape, strict=True)):
            continue
        out[name] = old.detach().clone().float()
    return out
