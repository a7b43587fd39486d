"""LoRA+ (Hayou et al., 2024): plain LoRA adapters, trained with a higher learning rate for the
B matrices (lr x ratio) than for the A matrices and the task head (lr). Only the optimizer's
parameter groups differ from LoRA (peft.optimizers.create_loraplus_optimizer does the same);
final/ is a plain LoRA adapter and merges on export."""

from __future__ import annotations

from collections.abc import Sequence

from llmtune.errors import UserError
from llmtune.peft.base import weight_decay_groups
from llmtune.peft.lora import LoRA


def is_lora_b(name: str) -> bool:
    """peft's B matrices (lora_B, and lora_embedding_B of adapted embeddings)."""
    return ".lora_B." in name or ".lora_embedding_B." in name


class LoRAPlus(LoRA):
    method = "lora_plus"
    default_lr = 1e-3  # the A rate; the paper sets it a little below plain LoRA's, B gets ratio x more

    def __init__(self, ratio: float = 16.0, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                 target_modules: str | Sequence[str] = "auto", bias: str = "none") -> None:
        if not ratio > 0:
            raise UserError(f"peft.ratio={ratio}: the B matrices' learning rate is lr x ratio, so ratio must be positive (the paper uses 16).")
        super().__init__(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules, bias=bias)
        self.ratio = ratio

    def param_groups(self, model, lr: float, weight_decay: float) -> list[dict]:
        params = list(model.named_parameters())
        rest = [(n, p) for n, p in params if not is_lora_b(n)]
        b = [(n, p) for n, p in params if is_lora_b(n)]
        return weight_decay_groups(rest, weight_decay) + weight_decay_groups(b, weight_decay, lr=lr * self.ratio)
