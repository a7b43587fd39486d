"""Find a model's parts from the model itself (no per-architecture lists)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a model is at hand, not when a config is checked
    import torch.nn as nn


def _tied_to_input_embeddings(module: nn.Module, model) -> bool:
    embeddings = model.get_input_embeddings()
    weight = embeddings.weight if embeddings is not None else None
    return weight is not None and any(p is weight for p in module.parameters())


def task_head_names(model) -> list[str]:
    """Top-level modules outside the backbone that hold parameters: the task head
    (`classifier`, `score`, `qa_outputs`, ...). LM heads tied to the input embeddings are not
    heads to train separately (they are the embeddings)."""
    backbone = getattr(model, "base_model_prefix", "")
    heads = []
    for name, module in model.named_children():
        if name == backbone or not any(True for _ in module.parameters()):
            continue
        if _tied_to_input_embeddings(module, model) or module is model.get_output_embeddings():
            continue  # an LM head is the vocabulary projection, not a task head
        heads.append(name)
    return heads


def in_modules(name: str, parents: list[str]) -> bool:
    """Whether the module called `name` is one of `parents` or inside one."""
    return any(name == p or name.startswith(p + ".") for p in parents)


def linear_module_paths(model, exclude: list[str]) -> list[str]:
    """Full names of every linear layer in the backbone (nn.Linear, and GPT-2's Conv1D which
    is a linear layer with transposed weights), skipping the excluded heads and the LM head."""
    import torch.nn as nn

    output = model.get_output_embeddings()
    return [
        name for name, module in model.named_modules()
        if (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D") and module is not output and not in_modules(name, exclude)
    ]


def linear_module_names(model, exclude: list[str]) -> list[str]:
    """Distinct leaf names of the backbone's linear layers (see linear_module_paths)."""
    return sorted({path.rsplit(".", 1)[-1] for path in linear_module_paths(model, exclude)})


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    trainable = total = 0
    for p in model.parameters():
        # A 4-bit weight (QLoRA) is stored packed, two to a byte; its quant_state knows its shape.
        quant_state = getattr(p, "quant_state", None)
        n = quant_state.shape.numel() if quant_state is not None else p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
