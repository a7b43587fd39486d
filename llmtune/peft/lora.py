"""LoRA through the peft library; the task head trains in full (modules_to_save).

Target modules (`peft.target_modules`): `auto` finds them from the model, every linear layer of
the backbone. Otherwise peft's own rules apply, so adapter_config.json means what it says:
a list names modules by name or dotted suffix (`[query,value]`, `[attention.self.query]`); a
string is a regular expression that must match a module's full name (`.*\\.(query|value)`).
Either is checked against the model first, so a wrong name is one line, not a peft traceback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llmtune.errors import UserError
from llmtune.peft.heads import in_modules, linear_module_names, linear_module_paths
from llmtune.peft.library import PeftLibraryMethod


def matches(spec: str | list[str], name: str) -> bool:
    """peft's rule for whether the module called `name` is a target (a str: full-match regex;
    a list: the name itself or a dotted suffix of it)."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def _layers_hint(model, heads: list[str]) -> str:
    paths = linear_module_paths(model, exclude=heads)
    example = f" (full names like {paths[0]})" if paths else ""
    return f"the linear layers of {type(model).__name__} are {', '.join(linear_module_names(model, heads))}{example}"


def check_targets(spec: str | list[str], model, heads: list[str]) -> None:
    """Raise UserError unless `spec` selects linear layers of the backbone, and only those."""
    if isinstance(spec, str):
        try:
            re.compile(spec)
        except re.error as exc:
            raise UserError(f"peft.target_modules={spec!r} is not a valid regular expression ({exc}).") from None
    elif not spec:
        raise UserError(f"peft.target_modules=[]: names no module; {_layers_hint(model, heads)}; or use peft.target_modules=auto.")
    linear = linear_module_paths(model, exclude=heads)
    unknown = [] if isinstance(spec, str) else [t for t in spec if not any(matches([t], path) for path in linear)]
    if unknown:
        raise UserError(f"peft.target_modules: {', '.join(unknown)} matches no linear layer; {_layers_hint(model, heads)}.")
    chosen = [name for name, _ in model.named_modules() if name and not in_modules(name, heads) and matches(spec, name)]
    if not chosen:
        raise UserError(
            f"peft.target_modules={spec!r} matches no module: a string is a regular expression over full module names, as in peft; "
            f"{_layers_hint(model, heads)}; to name layers use a list, e.g. peft.target_modules=[query,value]."
        )
    linear_set = set(linear)
    other = [name for name in chosen if name not in linear_set]
    if other:
        kind = type(model.get_submodule(other[0])).__name__
        raise UserError(f"peft.target_modules={spec!r} also matches {other[0]} ({kind}), which is not a linear layer; {_layers_hint(model, heads)}.")


def linear_targets(spec: str | list[str], model, heads: list[str], method: str) -> str | list[str]:
    """peft's target_modules for a method on linear layers: `auto` is every linear layer of the
    backbone (by name); a user's list or regex is checked against the model."""
    if spec != "auto":
        check_targets(spec, model, heads)
        return spec
    names = linear_module_names(model, exclude=heads)
    if not names:
        raise UserError(f"peft={method}: found no linear layers in {type(model).__name__}; name them with peft.target_modules=[...].")
    return names


class LoRA(PeftLibraryMethod):
    method = "lora"
    default_lr = 2e-3  # adapters start at zero and need a larger rate than full fine-tuning

    def __init__(self, r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: str | Sequence[str] = "auto", bias: str = "none") -> None:
        self.r, self.alpha, self.dropout, self.bias = r, alpha, dropout, bias
        # A string stays a string (a regex, as in peft); a list (ListConfig from Hydra) becomes a list of names.
        self.target_modules = target_modules if isinstance(target_modules, str) else [str(t) for t in target_modules]

    def targets(self, model, heads: list[str]) -> str | list[str]:
        """What peft gets as target_modules: `auto`'s layer names, or the user's, checked."""
        return linear_targets(self.target_modules, model, heads, self.method)

    def lora_options(self) -> dict:
        """LoraConfig settings of a LoRA variant (DoRA: use_dora, rsLoRA: use_rslora, ...)."""
        return {}

    def save(self, model, directory, state_dict: dict | None = None) -> None:
        # peft saves the whole embedding matrix when it was resized (tens of MB). With the
        # task's tokens trained (trainable_token_indices), the adapter already holds their
        # rows, and loading regrows the base to the same size (models.load_grown).
        trains_tokens = any(c.trainable_token_indices for c in model.peft_config.values())
        model.save_pretrained(directory, state_dict=state_dict, **({"save_embedding_layers": False} if trains_tokens else {}))

    def peft_config(self, model, task, heads: list[str]):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.targets(model, heads),
            bias=self.bias,
            modules_to_save=heads or None,
            # The embedding rows of tokens the task added (entity markers) train, saved in the adapter.
            trainable_token_indices=list(task.special_token_ids) or None,
            task_type=task.peft_task_type,
            **self.lora_options(),
        )
