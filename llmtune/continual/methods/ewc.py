"""Elastic weight consolidation (Kirkpatrick et al., 2017), online across stages (Schwarz et
al., 2018): lam/2 * sum_n F_n (theta_n - theta*_n)^2, with theta* the previous stage's weights
and F the diagonal Fisher information, F_t = gamma * F_{t-1} + (Fisher on stage t's data).

The Fisher is the empirical one: the mean over `fisher_samples` training examples of the
previous stage (drawn with the seed) of the squared gradient of each example's loss (mean per
labelled position, the unit the training loss uses), computed with the previous stage's own
model, task and head, dropout off. Each stage's accumulated F is kept in
<out>/continual-state/ so later stages (and a resumed sequence) read it back.

normalize (default true) divides each stage's Fisher by its mean over all parameters before it
is added. The raw Fisher of a model that fits its data well is tiny (measured: a mean of 1.8e-8
per weight for MiniLM-L6 after a topic stage at accuracy 1.0), so a raw lambda that matters is
somewhere near 1e7 and moves with the model's size and confidence; normalised, lambda = 1 makes
the penalty at naive fine-tuning's end point several times the task loss, and every stage of
an online sum weighs the same.
"""

from __future__ import annotations

import os
import random

import torch

from llmtune.continual.methods.base import Method, require_positive
from llmtune.continual.methods.penalty import anchors_from, penalty_term
from llmtune.continual.stagedata import as_features, previous_model, stage_raw, tokenized, trainable_parameters
from llmtune.continual.transfer import anchored
from llmtune.engine.loss import count_targets


def fisher_diagonal(model, task, features: list[dict], collate, seed: int = 0) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of `model` over examples (one backward each): name -> mean of
    the squared gradients of each example's per-position loss. Only parameters that require
    gradients are counted; the model is left in eval mode with no gradients stored."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    model.eval()
    used = 0
    for k, feature in enumerate(features):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + k)
            batch = collate([feature])
        labels = batch.pop("labels")
        count = count_targets(labels)
        if count == 0:
            continue
        model.zero_grad(set_to_none=True)
        logits, scored = task.logits(model, batch, labels)
        (task.loss(logits, scored) / count).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float().pow(2)
        used += 1
    model.zero_grad(set_to_none=True)
    return {n: f / max(used, 1) for n, f in fisher.items()}


def normalized(fisher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Fisher divided by its mean over every entry (all zero: unchanged)."""
    total = sum(float(f.sum()) for f in fisher.values())
    count = sum(f.numel() for f in fisher.values())
    if total <= 0 or count == 0:
        return fisher
    return {n: f * (count / total) for n, f in fisher.items()}


def accumulate(previous: dict[str, torch.Tensor], current: dict[str, torch.Tensor], gamma: float) -> dict[str, torch.Tensor]:
    """Online EWC: gamma * previous + current (a grown head: previous covers its old rows)."""
    out = {n: f.clone() for n, f in current.items()}
    for name, old in previous.items():
        if name in out and old.ndim == out[name].ndim:
            anchored(out[name], old).add_(gamma * old)
    return out


class EWC(Method):
    method = "ewc"

    def __init__(self, lam: float = 1.0, gamma: float = 1.0, fisher_samples: int = 200, normalize: bool = True, anchor_head: bool = True) -> None:
        self.lam = require_positive("lambda", lam)
        self.normalize, self.anchor_head = bool(normalize), bool(anchor_head)
        self.gamma = require_positive("gamma", gamma)
        self.fisher_samples = int(require_positive("fisher_samples", fisher_samples, allow_zero=False))

    def attach(self, trainer, ctx) -> None:
        if ctx.previous_final is None:
            return
        previous = previous_model(ctx)
        fisher = self._online_fisher(previous, ctx)
        params = trainable_parameters(trainer.model)
        anchors = anchors_from(previous.model, params, skip_heads=ctx.heads == "per_task" or not self.anchor_head)
        anchors = {n: a for n, a in anchors.items() if n in fisher}
        weights = {n: anchored(fisher[n], a) if fisher[n].shape != a.shape else fisher[n] for n, a in anchors.items()}
        trainer.task.loss_terms = (*trainer.task.loss_terms, penalty_term(params, anchors, weights, self.lam))

    def _online_fisher(self, previous, ctx) -> dict[str, torch.Tensor]:
        """F after the previous stage: read back when a resumed sequence computed it already."""
        from safetensors.torch import load_file, save_file

        done = ctx.index - 1  # the stage whose data the Fisher is estimated on
        path = ctx.state_dir / f"ewc-fisher-after-stage-{done}.safetensors"
        if path.is_file():
            return load_file(path)
        cfg = ctx.cfgs[done - 1]
        raw = stage_raw(cfg)["train"]
        order = list(range(len(raw)))
        random.Random(ctx.seed * 7919 + done).shuffle(order)
        rows = raw.select(sorted(order[: self.fisher_samples]))
        data = tokenized(previous.task, previous.tokenizer, rows)
        model = previous.model
        for p in model.parameters():
            p.requires_grad_(True)
        current = fisher_diagonal(model, previous.task, as_features(data), previous.task.collator(previous.tokenizer, train=True), ctx.seed)
        if self.normalize:
            current = normalized(current)
        earlier = ctx.state_dir / f"ewc-fisher-after-stage-{done - 1}.safetensors"
        fisher = accumulate(load_file(earlier), current, self.gamma) if earlier.is_file() else current
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")  # every process computes it; each writes whole, then renames
        save_file({n: f.contiguous() for n, f in fisher.items()}, str(partial))
        os.replace(partial, path)
        return fisher
