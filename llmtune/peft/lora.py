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
from llmtune.peft.heads import in_modules, linear_module_names, linear_module_paths, task_head_names


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


class LoRA:
    is_adapter = True
    method = "lora"
    default_lr = 2e-3  # adapters start at zero and need a larger rate than full fine-tuning

    def __init__(self, r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: str | Sequence[str] = "auto", bias: str = "none") -> None:
        self.r, self.alpha, self.dropout, self.bias = r, alpha, dropout, bias
        # A string stays a string (a regex, as in peft); a list (ListConfig from Hydra) becomes a list of names.
        self.target_modules = target_modules if isinstance(target_modules, str) else [str(t) for t in target_modules]

    def targets(self, model, heads: list[str]) -> str | list[str]:
        """What peft gets as target_modules: `auto`'s layer names, or the user's, checked."""
        if self.target_modules != "auto":
            check_targets(self.target_modules, model, heads)
            return self.target_modules
        names = linear_module_names(model, exclude=heads)
        if not names:
            raise UserError(f"peft=lora: found no linear layers in {type(model).__name__}; name them with peft.target_modules=[...].")
        return names

    def apply(self, model, task):
        from peft import LoraConfig, get_peft_model

        heads = task_head_names(model)
        targets = self.targets(model, heads)
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

    def load(self, final, auto, info: dict, base=None):
        """A final/ this method saved: the base model, built with final/'s config (it carries
        the label maps), plus the adapter. The base is the local folder the run loaded it from,
        or `base` (a model built from scratch, rebuilt by the caller from its config and seed)."""
        from peft import PeftConfig, PeftModel
        from transformers import AutoConfig

        if base is not None:
            return PeftModel.from_pretrained(base, final)
        base_path = info.get("base_model_path") or PeftConfig.from_pretrained(final).base_model_name_or_path
        if not base_path:
            raise UserError(f"{final}: the adapter's base model is not recorded (llmtune.json base_model_path); it cannot be loaded.")
        try:
            base = auto.from_pretrained(base_path, config=AutoConfig.from_pretrained(final))
        except OSError as exc:
            raise UserError(f"{final}: cannot load its base model from {base_path} ({str(exc).splitlines()[0]}); the adapter needs it.") from None
        return PeftModel.from_pretrained(base, final)

    def merged(self, model):
        """The adapter folded into the base weights: one plain transformers model."""
        return model.merge_and_unload()
