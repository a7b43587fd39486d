"""QLoRA (Dettmers et al., 2023): LoRA on a frozen base whose linear layers are stored in 4-bit
NF4 (bitsandbytes), computing in bf16; the adapters and the task head train in full precision.

The base's linear layers (those LoRA's `auto` would target: the backbone's, not the heads or
the LM head) are quantized in place when the method applies, so a base built from a config
works as well as one from a folder; the settings are BitsAndBytesConfig's bnb_4bit_* ones.
A resume, a checkpoint and final/ rebuild the same quantized base (quantization is
deterministic) and load only what trains. On export the 4-bit weights are dequantized and the
adapter is merged into them: a plain full-precision model with the weights training used.

Needs a CUDA GPU and bitsandbytes; elsewhere the run is refused on the command line.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from llmtune.errors import UserError
from llmtune.peft.heads import linear_module_paths, task_head_names
from llmtune.peft.lora import LoRA

DTYPES = ("bfloat16", "float16", "float32")


class QLoRA(LoRA):
    method = "qlora"
    default_lr = 2e-4  # the QLoRA paper's rate for its smaller models

    def __init__(self, quant_type: str = "nf4", compute_dtype: str = "bfloat16", double_quant: bool = True, requires: Sequence[str] = ("bitsandbytes",),
                 r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: str | Sequence[str] = "auto", bias: str = "none") -> None:
        if quant_type not in ("nf4", "fp4"):
            raise UserError(f"peft.quant_type={quant_type}: expected nf4 (the QLoRA paper's) or fp4.")
        if compute_dtype not in DTYPES:
            raise UserError(f"peft.compute_dtype={compute_dtype}: expected one of {', '.join(DTYPES)}.")
        super().__init__(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules, bias=bias)
        self.quant_type, self.compute_dtype, self.double_quant = quant_type, compute_dtype, double_quant
        self.requires = list(requires)  # read by the builders from the config: bitsandbytes stays importable

    def preflight(self, cfg) -> None:
        import torch

        missing = [what for what, ok in (("a CUDA GPU", torch.cuda.is_available() and not cfg.trainer.cpu),
                                         ("bitsandbytes (pip install 'llmtune[bnb]')", importlib.util.find_spec("bitsandbytes") is not None)) if not ok]
        if missing:
            raise UserError(f"peft=qlora needs a CUDA GPU and bitsandbytes for its 4-bit base; missing here: {' and '.join(missing)}"
                            f"{' (trainer.cpu=true)' if cfg.trainer.cpu else ''}. Use peft=lora instead.")

    def apply(self, model, task):
        return super().apply(self.prepare_base(model), task)

    def prepare_base(self, base):
        """Quantize the backbone's linear layers to 4 bits, in place."""
        import torch

        import_bitsandbytes(self.method)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        for path in linear_module_paths(base, exclude=task_head_names(base)):
            base.set_submodule(path, self.quantized(base.get_submodule(path), device))
        return base

    def quantized(self, layer, device: str):
        import bitsandbytes as bnb
        import torch

        conv1d = type(layer).__name__ == "Conv1D"  # GPT-2: the weight is stored transposed
        weight = layer.weight.detach().t() if conv1d else layer.weight.detach()
        q = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=layer.bias is not None, compute_dtype=getattr(torch, self.compute_dtype),
                              compress_statistics=self.double_quant, quant_type=self.quant_type, device="meta")
        q.weight = bnb.nn.Params4bit(weight.contiguous(), requires_grad=False, compress_statistics=self.double_quant, quant_type=self.quant_type)
        if layer.bias is not None:
            q.bias = torch.nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        q.llmtune_conv1d = conv1d  # what to give back on export
        return q.to(device)  # moving it quantizes it

    def merged(self, model):
        """Dequantize the base, fold the adapter in at full precision: a plain model."""
        import bitsandbytes as bnb
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer) and isinstance(module.get_base_layer(), bnb.nn.Linear4bit):
                delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
                model.set_submodule(name, dequantized(module.get_base_layer(), delta))
        for name, module in list(model.named_modules()):
            if isinstance(module, bnb.nn.Linear4bit):  # layers the adapter did not target
                model.set_submodule(name, dequantized(module, 0))
        return model.unload()


def import_bitsandbytes(method: str) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"peft={method} needs bitsandbytes, which is not installed; pip install 'llmtune[bnb]' or use peft=lora.")


def dequantized(layer, delta):
    """A full-precision linear layer (or GPT-2 Conv1D) with `layer`'s dequantized weight + delta."""
    import bitsandbytes as bnb
    import torch

    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float() + delta
    bias = layer.bias.detach().float() if layer.bias is not None else None
    if getattr(layer, "llmtune_conv1d", False):
        from transformers.pytorch_utils import Conv1D

        plain = Conv1D(weight.shape[0], weight.shape[1])
        weight = weight.t()
    else:
        plain = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
    plain.requires_grad_(False)
    return plain.to(weight.device)
