"""PiSSA (Meng et al., 2024): LoRA whose adapter starts at the principal singular components of
each weight, A0 B0, while the base keeps the residual W - B0 A0 (peft: init_lora_weights="pissa").
The model therefore starts with the base model's outputs, but the base weights are changed.

So that final/ loads onto the unchanged base model (llmtune's verbs, plain peft), the adapter is
saved converted to a plain LoRA adapter of rank 2r (peft's documented conversion, as
save_pretrained(path_initial_model_for_weight_conversion=...) does):
    W_res + B A = W + (B A - B0 A0) = W + [B | -B0] [A ; A0]
The initial A0, B0 are kept from `apply`; a resumed run or a checkpoint rebuilds them the same
way (same base weights, same seed), and a checkpoint holds only A, B and the head.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from llmtune.errors import UserError
from llmtune.peft.lora import LoRA


class PiSSA(LoRA):
    method = "pissa"
    default_lr = 2e-4  # the adapter starts at the weights' largest components, not at zero: a full-fine-tuning-like rate

    def __init__(self, init: str = "pissa", r: int = 8, alpha: int = 8, dropout: float = 0.0,
                 target_modules: str | Sequence[str] = "auto", bias: str = "none") -> None:
        if not (init == "pissa" or init.startswith("pissa_niter_")):
            raise UserError(f"peft.init={init}: expected pissa (exact SVD) or pissa_niter_N (fast randomized SVD, N iterations, e.g. pissa_niter_4).")
        super().__init__(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules, bias=bias)
        self.init = init
        self.initial: dict | None = None  # A0, B0 by their saved names (set by apply)

    def lora_options(self) -> dict:
        return {"init_lora_weights": self.init}

    def apply(self, model, task):
        from peft import get_peft_model_state_dict

        model = super().apply(model, task)
        self.initial = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items() if ".lora_A." in k or ".lora_B." in k}
        return model

    def save(self, model, directory, state_dict: dict | None = None) -> None:
        super().save(model, directory, state_dict)
        # Without A0, B0 (a model loaded from a converted final/) the adapter already is plain LoRA.
        if self.initial is not None and str(model.peft_config["default"].init_lora_weights).startswith("pissa"):
            to_plain_lora(Path(directory), self.initial)


def to_plain_lora(folder: Path, initial: dict) -> None:
    """Rewrite the PiSSA adapter in `folder` as the plain LoRA adapter of the same model on the
    original base weights (rank 2r, same scaling); other weights (the head) are kept as they are."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "adapter_model.safetensors")
    for name, tensor in weights.items():
        if ".lora_A." in name:
            weights[name] = torch.cat([tensor, initial[name].to(tensor.dtype)], dim=0).contiguous()
        elif ".lora_B." in name:
            weights[name] = torch.cat([tensor, -initial[name].to(tensor.dtype)], dim=1).contiguous()
    save_file(weights, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(r=2 * config["r"], lora_alpha=2 * config["lora_alpha"], init_lora_weights=True)  # alpha/r unchanged
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

