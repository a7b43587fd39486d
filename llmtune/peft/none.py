"""Full fine-tuning: every parameter trains; final/ is a whole model (PeftMethod's save, load and merged)."""

from __future__ import annotations

from llmtune.peft.base import PeftMethod


class FullFineTune(PeftMethod):
    is_adapter = False
    method = "none"
    default_lr = 5e-5  # optimizer.lr when unset: the usual full fine-tuning rate

    def apply(self, model, task):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
