"""VeRA (Kopiczko et al., 2024): one pair of frozen random low-rank matrices shared by every
adapted layer; each layer trains only two scaling vectors (peft: VeraConfig). The output-side
vector starts at zero, so the model starts as the base model. The random matrices come from a
seed (projection_prng_key) and are also saved in final/. Merges on export."""

from __future__ import annotations

from collections.abc import Sequence

from llmtune.peft.library import PeftLibraryMethod
from llmtune.peft.lora import linear_targets


class VeRA(PeftLibraryMethod):
    method = "vera"
    default_lr = 1e-2  # only scaling vectors train: the paper uses rates well above LoRA's

    def __init__(self, r: int = 256, dropout: float = 0.0, d_initial: float = 0.1, projection_prng_key: int = 0,
                 target_modules: str | Sequence[str] = "auto") -> None:
        self.r, self.dropout, self.d_initial, self.projection_prng_key = r, dropout, d_initial, projection_prng_key
        self.target_modules = target_modules if isinstance(target_modules, str) else [str(t) for t in target_modules]

    def peft_config(self, model, task, heads: list[str]):
        from peft import VeraConfig

        return VeraConfig(
            r=self.r, vera_dropout=self.dropout, d_initial=self.d_initial, projection_prng_key=self.projection_prng_key,
            save_projection=True, target_modules=linear_targets(self.target_modules, model, heads, self.method),
            modules_to_save=heads or None, task_type=task.peft_task_type,
        )
