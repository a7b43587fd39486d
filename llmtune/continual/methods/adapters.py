"""Parameter isolation: every stage trains a new LoRA adapter (and its own head) on the frozen
initial backbone, and stage j is scored with stage j's adapter: the stage is named at
evaluation, as at prediction (`llmtune predict <out>/stage-j-<name>/final`). The backbone
never changes, so nothing learnt is overwritten: the price is one adapter per stage and
needing to know the stage of each input.
"""

from __future__ import annotations

from llmtune.continual.methods.base import Method


class Adapters(Method):
    method = "adapters"
    starts_from_previous = False

    def stage_overrides(self) -> list[str]:
        return ["peft=lora"]

    def eval_stage(self, trained: int, scored: int) -> int:
        return scored if scored <= trained else trained

