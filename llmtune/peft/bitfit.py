"""BitFit (Ben Zaken et al., 2022): train only bias terms, plus the task head. The peft
library does not provide it, so it lives here: freezing by parameter name."""

from __future__ import annotations

from llmtune.errors import UserError
from llmtune.peft.base import PeftMethod
from llmtune.peft.heads import task_head_names


class BitFit(PeftMethod):
    is_adapter = False
    method = "bitfit"
    default_lr = 1e-3  # few parameters move, so they can move faster (the BitFit paper used 1e-4..1e-3)

    def __init__(self, train_head: bool = True) -> None:
        self.train_head = train_head

    def apply(self, model, task):
        heads = task_head_names(model) if self.train_head else []
        biases = 0
        for name, p in model.named_parameters():
            is_bias = name.endswith(".bias")
            in_head = any(name.startswith(h + ".") for h in heads)
            p.requires_grad_(is_bias or in_head)
            biases += is_bias
        if biases == 0:
            raise UserError(f"peft=bitfit: {type(model).__name__} has no bias parameters to train (e.g. Llama-style models); use peft=lora.")
        return model

    def save(self, model, directory, state_dict: dict | None = None) -> None:
        model.save_pretrained(directory, state_dict=state_dict)  # the whole model: loads with plain AutoModelFor*

    def load(self, final, auto, info: dict, base=None):
        """A final/ this method saved, as a model (final/ is a whole model folder)."""
        return auto.from_pretrained(final)

    def merged(self, model):
        """The model as one plain transformers model (nothing to merge)."""
        return model
