"""rsLoRA (Kalajdzievski, 2023): LoRA scaled by alpha/sqrt(r) instead of alpha/r, so that higher
ranks keep learning (peft: LoraConfig(use_rslora=True)). Starts as the base model; merges on export."""

from __future__ import annotations

from llmtune.peft.lora import LoRA


class RsLoRA(LoRA):
    method = "rslora"

    def lora_options(self) -> dict:
        return {"use_rslora": True}
