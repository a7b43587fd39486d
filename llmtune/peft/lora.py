"""LoRA through the peft library. Target modules are found from the model: every linear
layer of the backbone; the task head trains in full (modules_to_save)."""

from __future__ import annotations

from collections.abc import Sequence

from llmtune.errors import UserError
from llmtune.peft.heads import linear_module_names, task_head_names


class LoRA:
    is_adapter = True
    method = "lora"
    default_lr = 2e-3  # adapters start at zero and need a larger rate than full fine-tuning

    def __init__(self, r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: str | Sequence[str] = "auto", bias: str = "none") -> None:
        self.r, self.alpha, self.dropout, self.bias = r, alpha, dropout, bias
        self.target_modules = target_modules

    def apply(self, model, task):
        from peft import LoraConfig, get_peft_model

        heads = task_head_names(model)
        if self.target_modules == "auto":
            targets = linear_module_names(model, exclude=heads)
        else:
            targets = list(self.target_modules)
            known = set(linear_module_names(model, exclude=[]))
            unknown = [t for t in targets if t not in known]
            if unknown:
                raise UserError(f"peft.target_modules: {unknown} are not linear layers of {type(model).__name__} (it has: {', '.join(sorted(known))}).")
        if not targets:
            raise UserError(f"peft=lora: found no linear layers in {type(model).__name__}; name them with peft.target_modules=[...].")
        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            bias=self.bias,
            modules_to_save=heads or None,
            task_type=task.peft_task_type,
        )
        return get_peft_model(model, config)

    def save(self, model, directory, state_dict: dict | None = None) -> None:
        model.save_pretrained(directory, state_dict=state_dict)  # adapter + head weights + adapter_config.json
