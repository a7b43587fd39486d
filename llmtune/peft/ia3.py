"""IA3 (Liu et al., 2022): learned vectors that rescale the activations of chosen layers, at
their output, or for feed-forward layers at their input (the inner activation); nothing else in
the backbone trains (peft: IA3Config). The vectors start at one: the model starts as the base
model. Merges on export (the vectors fold into the weights).

`auto` targets: the paper's choice where peft knows the architecture (keys, values and the
feed-forward down projection: peft's per-architecture table); otherwise every linear layer of
the backbone. `auto` feed-forward modules: peft's table alike, otherwise the targets that map a
wider input to a narrower output (a feed-forward block's down projection).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmtune.errors import UserError
from llmtune.peft.heads import linear_module_paths
from llmtune.peft.library import PeftLibraryMethod
from llmtune.peft.lora import linear_targets, matches


def fan(module) -> tuple[int, int]:
    """(inputs, outputs) of a linear layer (GPT-2's Conv1D keeps its weight transposed)."""
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0], module.weight.shape[1]
    return module.in_features, module.out_features


def narrowing(spec: str | list[str], model, heads: list[str]) -> list[str]:
    """The targets whose layers all map a wider input to a narrower output: the names in a list
    `spec`, or the full module names a regex `spec` matches."""
    layers = {path: model.get_submodule(path) for path in linear_module_paths(model, exclude=heads)}
    if isinstance(spec, str):
        return [path for path, m in layers.items() if matches(spec, path) and fan(m)[0] > fan(m)[1]]
    chosen = []
    for name in spec:
        found = [m for path, m in layers.items() if matches([name], path)]
        if found and all(fan(m)[0] > fan(m)[1] for m in found):
            chosen.append(name)
    return chosen


class IA3(PeftLibraryMethod):
    method = "ia3"
    default_lr = 3e-3  # the paper's rate: only scaling vectors train

    def __init__(self, target_modules: str | Sequence[str] = "auto", feedforward_modules: str | Sequence[str] = "auto") -> None:
        self.target_modules = target_modules if isinstance(target_modules, str) else [str(t) for t in target_modules]
        self.feedforward_modules = feedforward_modules if isinstance(feedforward_modules, str) else [str(t) for t in feedforward_modules]

    def modules(self, model, heads: list[str]) -> tuple[str | list[str], str | list[str]]:
        """(target_modules, feedforward_modules) for peft, `auto` resolved and the user's checked."""
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

        model_type = getattr(model.config, "model_type", None)
        known = self.target_modules == "auto" and model_type in TARGETS and model_type in FEEDFORWARD
        targets = list(TARGETS[model_type]) if known else linear_targets(self.target_modules, model, heads, self.method)
        if self.feedforward_modules != "auto":
            feedforward = self.feedforward_modules
            if isinstance(targets, list) and not isinstance(feedforward, str) and not set(feedforward) <= set(targets):
                raise UserError(f"peft.feedforward_modules={feedforward}: each must also be in peft.target_modules ({targets}); add it there or drop it.")
        else:
            feedforward = list(FEEDFORWARD[model_type]) if known else narrowing(targets, model, heads)
        return targets, feedforward

    def peft_config(self, model, task, heads: list[str]):
        from peft import IA3Config

        targets, feedforward = self.modules(model, heads)
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, modules_to_save=heads or None, task_type=task.peft_task_type)
