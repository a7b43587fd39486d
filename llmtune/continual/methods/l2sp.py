"""L2-SP: a quadratic penalty towards the previous stage's weights (Li et al., 2018),
lam/2 * ||theta - theta_prev||^2 over the parameters both stages train (a grown head: its old
rows). Weight: continual.lambda."""

from __future__ import annotations

from llmtune.continual.methods.base import Method, require_positive
from llmtune.continual.methods.penalty import anchors_from, penalty_term
from llmtune.continual.stagedata import previous_model, trainable_parameters


class L2SP(Method):
    method = "l2sp"

    def __init__(self, lam: float = 0.01) -> None:
        self.lam = require_positive("lambda", lam)

    def attach(self, trainer, ctx) -> None:
        if ctx.previous_final is None or self.lam == 0:
            return
        params = trainable_parameters(trainer.model)
        anchors = anchors_from(previous_model(ctx).model, params, skip_heads=ctx.heads == "per_task")
        trainer.task.loss_terms = (*trainer.task.loss_terms, penalty_term(params, anchors, None, self.lam))
