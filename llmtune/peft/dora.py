"""DoRA (Liu et al., 2024): LoRA whose update is split into a direction (the low-rank adapter)
and a per-output magnitude vector, both trained (peft: LoraConfig(use_dora=True)). The magnitude
starts at the norms of the base weights, so the model starts as the base model. Merges on export."""

from __future__ import annotations

from llmtune.peft.lora import LoRA


class DoRA(LoRA):
    method = "dora"

    def lora_options(self) -> dict:
        return {"use_dora": True}
