"""Learning without forgetting (Li & Hoiem, 2016): while a stage trains on its new data, the
frozen previous model's outputs on the same inputs are distilled into the model, on the
classes the previous model knew (the first ones: the head only grows).

Loss term, per labelled position: weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
over the old classes, summed like the task loss (so `weight` is its share per position).
Options: continual.temperature (T), continual.weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmtune.continual.methods.base import Method, require_positive
from llmtune.continual.stagedata import previous_model
from llmtune.errors import UserError
from llmtune.tasks.base import IGNORE_INDEX


def distillation_sum(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, summed over labelled positions, on
    the teacher's classes (the first teacher.shape[-1] of the student's)."""
    mask = labels != IGNORE_INDEX
    old = teacher.shape[-1]
    s = student[..., :old][mask].float() / temperature
    t = teacher[mask].float() / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="sum")
    return kl * temperature**2


class LwF(Method):
    method = "lwf"

    def __init__(self, temperature: float = 2.0, weight: float = 1.0) -> None:
        self.temperature = require_positive("temperature", temperature, allow_zero=False)
        self.weight = require_positive("weight", weight)

    def check(self, heads: str) -> None:
        if heads != "shared":
            raise UserError("continual=lwf distils the previous model's head into the shared head; it needs heads=shared (or pick continual=ewc / l2sp for heads=per_task).")

    def attach(self, trainer, ctx) -> None:
        if ctx.previous_final is None or self.weight == 0:
            return
        teacher = previous_model(ctx, trainer.accelerator.device).model
        for p in teacher.parameters():
            p.requires_grad_(False)
        task, temperature, weight = trainer.task, self.temperature, self.weight

        def term(model, batch, logits, labels):
            with torch.no_grad():
                old, _ = task.logits(teacher, batch, labels)
            return weight * distillation_sum(logits, old, labels, temperature)

        trainer.task.loss_terms = (*trainer.task.loss_terms, term)
