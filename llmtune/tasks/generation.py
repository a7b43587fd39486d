"""Text generation for decoder tasks (predict, serve, generation-scored evaluation).

Prompts are left-padded so every row's new tokens start at the same position; greedy unless
`temperature` > 0 (then sampling, with `top_p`). Returns only the new text of each row.
"""

from __future__ import annotations

import torch

GENERATION_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0}


def encode_prompts(tokenizer, prompts: list[str], add_special_tokens: bool = True) -> dict:
    """Left-padded input_ids and attention_mask for a batch of prompt strings."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = side


def check_settings(settings: dict) -> None:
    """One line for a setting generate() would reject with a traceback (or silently misuse)."""
    from llmtune.errors import UserError

    if int(settings["max_new_tokens"]) < 1:
        raise UserError(f"max_new_tokens={settings['max_new_tokens']}: must be 1 or more.")
    if float(settings["temperature"]) < 0:
        raise UserError(f"temperature={settings['temperature']}: must be 0 (greedy) or more.")
    if not 0 < float(settings["top_p"]) <= 1:
        raise UserError(f"top_p={settings['top_p']}: must be more than 0 and at most 1.")


@torch.no_grad()
def generate_texts(model, tokenizer, inputs: dict, params: dict) -> list[str]:
    """New text for each row of a left-padded batch (input_ids, attention_mask)."""
    settings = {**GENERATION_DEFAULTS, **{k: v for k, v in params.items() if k in GENERATION_DEFAULTS}}
    check_settings(settings)
    sample = float(settings["temperature"]) > 0
    kwargs = {
        "max_new_tokens": int(settings["max_new_tokens"]),
        "do_sample": sample,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if sample:
        kwargs.update(temperature=float(settings["temperature"]), top_p=float(settings["top_p"]))
    else:  # greedy: unset the sampling knobs a checkpoint's generation_config may carry
        kwargs.update(temperature=None, top_p=None, top_k=None)
    model_device = next(model.parameters()).device
    inputs = {k: v.to(model_device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    output = model.generate(**inputs, **kwargs)
    new = output[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
