"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021), written here: AdapterHub's
`adapters` package does not work with transformers 5, and peft has no bottleneck adapter.

An adapter is down-projection -> non-linearity -> up-projection, added to the output of the
layer it follows (a residual). The up-projection starts at zero, so training starts exactly at
the base model. `houlsby` puts one after the attention block's output projection and one after
the feed-forward block's; `pfeiffer` only after the feed-forward block's. Those layers are found
by name (ATTENTION_OUTPUTS, FFN_OUTPUTS: BERT-style encoders, Llama-style decoders, GPT-2,
DistilBERT, OPT/BART); for other models `peft.targets` names them. Only the adapters and the
task head train.

final/ holds adapter.safetensors (the adapters and the head) and adapter.json (the settings and
the layers adapted) next to the base model's config; llmtune's loader rebuilds the base and
puts the adapters back. Nothing is merged: `export` writes the same files, which `llmtune
predict/evaluate/serve` load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from llmtune.errors import UserError
from llmtune.peft.base import PeftMethod
from llmtune.peft.heads import in_modules, linear_module_names, linear_module_paths, task_head_names
from llmtune.peft.lora import matches

WEIGHTS, SETTINGS = "adapter.safetensors", "adapter.json"
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}
# Full-name patterns of the layer that ends each block, per architecture family.
ATTENTION_OUTPUTS = (
    r".*\.attention\.output\.dense",   # BERT, RoBERTa, ELECTRA, MiniLM
    r".*\.self_attn\.o_proj",          # Llama, Mistral, Qwen, Gemma
    r".*\.attn\.c_proj",               # GPT-2
    r".*\.attention\.out_lin",         # DistilBERT
    r".*\.self_attn\.out_proj",        # OPT, BART
)
FFN_OUTPUTS = (
    r".*\.layer\.\d+\.output\.dense",  # BERT-style (not attention.output.dense)
    r".*\.mlp\.down_proj",             # Llama-style
    r".*\.mlp\.c_proj",                # GPT-2
    r".*\.ffn\.lin2",                  # DistilBERT
    r".*\.fc2",                        # OPT, BART
)
PLACES = {"houlsby": (ATTENTION_OUTPUTS, FFN_OUTPUTS), "pfeiffer": (FFN_OUTPUTS,)}


class Bottleneck(nn.Module):
    """h + up(act(down(h))), with `up` at zero: the identity until it trains."""

    def __init__(self, size: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(size, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


class Adapted(nn.Module):
    """A layer whose output goes through an adapter."""

    def __init__(self, layer: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.layer, self.adapter = layer, adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.layer(*args, **kwargs))


def _out_features(layer: nn.Module) -> int:
    """Output size of a linear layer (GPT-2's Conv1D keeps it as `nf`)."""
    return layer.out_features if isinstance(layer, nn.Linear) else layer.nf


class BottleneckAdapter(PeftMethod):
    is_adapter = True          # final/ holds the adapters, not a whole model
    method = "adapter"
    default_lr = 1e-3          # Houlsby et al. and AdapterHub use 1e-4..1e-3

    def __init__(self, config: str = "houlsby", reduction: int = 16, non_linearity: str = "relu",
                 targets: str | Sequence[str] = "auto") -> None:
        if config not in PLACES:
            raise UserError(f"peft.config={config}: not an adapter configuration; use houlsby (after attention and feed-forward) or pfeiffer (after feed-forward).")
        if non_linearity not in ACTIVATIONS:
            raise UserError(f"peft.non_linearity={non_linearity}: use one of {', '.join(ACTIVATIONS)}.")
        if reduction < 1:
            raise UserError(f"peft.reduction={reduction}: the hidden size is divided by it to size the bottleneck; use 1 or more (16 is usual).")
        self.config, self.reduction, self.non_linearity = config, reduction, non_linearity
        # As in peft=lora: a string is a regex over full module names, a list names modules by suffix.
        self.targets = targets if isinstance(targets, str) else [str(t) for t in targets]

    # ------------------------------------------------------------------ where the adapters go
    def layers(self, model, heads: list[str]) -> list[str]:
        """Full names of the layers to adapt, checked: linear layers of the backbone."""
        linear = linear_module_paths(model, exclude=heads)
        hint = f"the linear layers of {type(model).__name__} are {', '.join(linear_module_names(model, heads))}"
        if self.targets != "auto":
            chosen = [name for name in linear if matches(self.targets, name)]
            if not chosen:
                raise UserError(f"peft.targets={self.targets!r} matches no linear layer; {hint} (a list names them by suffix, e.g. [output.dense]).")
            return chosen
        chosen = []
        for patterns in PLACES[self.config]:
            found = [name for name in linear if any(re.fullmatch(p, name) for p in patterns)]
            if not found:
                block = "attention" if patterns is ATTENTION_OUTPUTS else "feed-forward"
                raise UserError(
                    f"peft=adapter: cannot tell which layers end the {block} blocks of {type(model).__name__}; name the layers to adapt "
                    f"with peft.targets=[...] (by suffix, e.g. peft.targets=[mlp.down_proj]); {hint}."
                )
            chosen += found
        return sorted(chosen)

    def insert(self, model, layers: list[str]):
        """Wrap each named layer with a new adapter; freeze all but adapters and `heads`."""
        for name in layers:
            parent, _, child = name.rpartition(".")
            layer = model.get_submodule(name)
            size = _out_features(layer)
            adapter = Bottleneck(size, max(1, size // self.reduction), self.non_linearity).to(layer.weight.device, layer.weight.dtype)
            setattr(model.get_submodule(parent), child, Adapted(layer, adapter))
        return model

    @staticmethod
    def freeze(model, heads: list[str]) -> None:
        """Only the adapters and the task head train."""
        adapters = {id(p) for m in model.modules() if isinstance(m, Bottleneck) for p in m.parameters()}
        for name, p in model.named_parameters():
            p.requires_grad_(id(p) in adapters or in_modules(name, heads))

    def apply(self, model, task):
        heads = task_head_names(model)
        model = self.insert(model, self.layers(model, heads))
        self.freeze(model, heads)
        return model

    # ------------------------------------------------------------------ final/
    def save(self, model, directory, state_dict: dict | None = None) -> None:
        """The adapters and the head (what trains), and where the adapters go."""
        from safetensors.torch import save_file

        trained = [name for name, p in model.named_parameters() if p.requires_grad]
        source = state_dict if state_dict is not None else dict(model.named_parameters())
        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file({n: source[n].detach().cpu().contiguous() for n in trained}, str(Path(directory) / WEIGHTS))
        layers = sorted(name.removesuffix(".adapter") for name, m in model.named_modules() if isinstance(m, Bottleneck))
        settings = {"config": self.config, "reduction": self.reduction, "non_linearity": self.non_linearity, "layers": layers,
                    "heads": task_head_names(model)}
        (Path(directory) / SETTINGS).write_text(json.dumps(settings, indent=1))

    def load(self, final, auto, info: dict, base=None):
        """The base (rebuilt by the caller when built from scratch, else loaded from the folder
        the run used, with final/'s config: its label maps) with the saved adapters."""
        from safetensors.torch import load_file
        from transformers import AutoConfig

        if base is None:
            path = info.get("base_model_path")
            if not path:
                raise UserError(f"{final}: the adapter's base model is not recorded (llmtune.json base_model_path); it cannot be loaded.")
            try:
                base = auto.from_pretrained(path, config=AutoConfig.from_pretrained(final))
            except OSError as exc:
                raise UserError(f"{final}: cannot load its base model from {path} ({str(exc).splitlines()[0]}); the adapters need it.") from None
        settings = json.loads((Path(final) / SETTINGS).read_text())
        model = self.insert(base, settings["layers"])
        self.freeze(model, settings["heads"])
        saved = load_file(str(Path(final) / WEIGHTS))
        params = dict(model.named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        if set(saved) != expected:
            raise UserError(f"{final}/{WEIGHTS} does not match the adapters of {SETTINGS} (missing {sorted(expected - set(saved))[:3]}); it was changed by hand or by another llmtune version.")
        with torch.no_grad():
            for name, tensor in saved.items():
                params[name].copy_(tensor)
        return model

    def merged(self, model):
        """None: the adapters are kept as modules (a non-linearity cannot fold into a weight);
        `export` writes them as final/ does."""
        return None
