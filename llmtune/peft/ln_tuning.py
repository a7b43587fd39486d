"""LN tuning (Zhao et al., 2024): train only the normalisation layers (LayerNorm, RMSNorm), plus
the task head (peft: LNTuningConfig: each targeted layer gets a trainable copy, so the model
starts as the base model). On export the trained copies replace the originals.

`auto` targets every normalisation layer of the backbone, found from the model (a module with
parameters whose class name ends in "Norm", as LayerNorm and LlamaRMSNorm do), not from a
per-architecture list; or name them as in peft (a list of names or dotted suffixes, or a regex).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

from llmtune.errors import UserError
from llmtune.peft.heads import in_modules
from llmtune.peft.library import PeftLibraryMethod
from llmtune.peft.lora import matches


def norm_paths(model, heads: list[str]) -> list[str]:
    """Full names of the backbone's normalisation layers that hold parameters."""
    return [
        name for name, module in model.named_modules()
        if name and type(module).__name__.endswith("Norm") and any(True for _ in module.parameters(recurse=False)) and not in_modules(name, heads)
    ]


@contextlib.contextmanager
def _norms_are_not_linear():
    """peft asks every target for its linear in/out sizes and warns that a norm layer has none;
    LN tuning copies the layer whole, so that is fine here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        yield


class LNTuning(PeftLibraryMethod):
    method = "ln_tuning"
    default_lr = 1e-3  # few parameters, all near 1 (scales) and 0 (shifts)

    def __init__(self, target_modules: str | Sequence[str] = "auto") -> None:
        self.target_modules = target_modules if isinstance(target_modules, str) else [str(t) for t in target_modules]

    def targets(self, model, heads: list[str]) -> str | list[str]:
        norms = norm_paths(model, heads)
        names = sorted({path.rsplit(".", 1)[-1] for path in norms})
        if not norms:
            raise UserError(f"peft={self.method}: found no normalisation layers in {type(model).__name__}; name them with peft.target_modules=[...].")
        if self.target_modules == "auto":
            return names
        if not any(matches(self.target_modules, path) for path in norms):
            raise UserError(f"peft.target_modules={self.target_modules!r} matches no normalisation layer; those of {type(model).__name__} are {', '.join(names)} (full names like {norms[0]}).")
        return self.target_modules

    def apply(self, model, task):
        with _norms_are_not_linear():
            return super().apply(model, task)

    def load(self, final, auto, info: dict, base=None):
        with _norms_are_not_linear():
            return super().load(final, auto, info, base=base)

    def peft_config(self, model, task, heads: list[str]):
        from peft import LNTuningConfig

        return LNTuningConfig(target_modules=self.targets(model, heads), modules_to_save=heads or None, task_type=task.peft_task_type)

    def merged(self, model):
        """The trained norm layers in place of the originals, and the trained head in place of
        its wrapper (peft's LN-tuning unload leaves modules_to_save wrapped)."""
        from peft.utils.other import AuxiliaryTrainingWrapper

        plain = model.merge_and_unload()
        for name, module in list(plain.named_modules()):
            if isinstance(module, AuxiliaryTrainingWrapper):
                plain.set_submodule(name, module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None))
        return plain
