"""Full fine-tuning: every parameter trains."""

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

    def save(self, model, directory, state_dict: dict | None = None) -> None:
        model.save_pretrained(directory, state_dict=state_dict)

    def load(self, final, auto, info: dict, base=None):
        """A final/ this method saved, as a model (final/ is a whole model folder)."""
        return auto.from_pretrained(final)

    def merged(self, model):
        """The model as one plain transformers model (nothing to merge)."""
        return model
