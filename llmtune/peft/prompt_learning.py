"""Prompt learning through the peft library: trained virtual tokens, the base model frozen.
The shared part of peft=prompt_tuning, peft=prefix and peft=p_tuning (one module each).

Prompt tuning and P-tuning put `num_virtual_tokens` embeddings in front of the input, so the
model sees that many more positions and peft returns logits for them too (token
classification, causal LM). Those are cut off here, by a forward hook on the model itself:
every caller (the engine, Task.logits, evaluate, predict, serve) gets logits aligned with the
real tokens and with the task's labels, and nothing outside this module knows. Prefix tuning
adds its virtual tokens as attention keys/values (a KV-cache prefix): the logits are the real
positions already.

Refused before anything is written, in one line each (`preflight`: from the config alone;
`check`: from the built model):
  - a model whose absolute positions cannot hold task.max_length + num_virtual_tokens;
  - packed batches (samples kept apart by position_ids: peft drops them, or adds a cache that
    switches the separation off);
  - a sequence classifier that pools the last position (decoders find their last real token
    in input_ids, which prompt learning replaces by embeddings: padding would be pooled);
  - prefix tuning outside causal LMs (llmtune.peft.prefix);
  - other task types (seq2seq, question answering, masked LM), which are not tested with it.
"""

from __future__ import annotations

import torch

from llmtune.errors import UserError
from llmtune.peft.library import PeftLibraryMethod

# The peft task types whose virtual tokens go in front of the one input sequence, so that
# cutting them off the logits (strip_virtual_positions) is all the alignment there is.
TASK_TYPES = ("SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM")


def strip_virtual_positions(model, num_virtual_tokens: int):
    """Make `model` (a PeftModel) return logits for the real tokens only: peft prepends the
    virtual tokens' positions to per-token logits. Pooled logits (one row per sequence) and
    logits that already match the input pass unchanged."""

    def hook(module, args, kwargs, output):
        logits = getattr(output, "logits", None)
        given = kwargs.get("input_ids", args[0] if args else None)
        if given is None:
            given = kwargs.get("inputs_embeds")
        if logits is not None and given is not None and logits.dim() >= 3 and logits.shape[1] == given.shape[1] + num_virtual_tokens:
            output.logits = logits[:, num_virtual_tokens:]
        return output

    model.register_forward_hook(hook, with_kwargs=True)
    return model


def pools_last_position(model) -> bool:
    """Whether a sequence classifier given embeddings (as prompt learning gives it) reads the
    last position whatever the attention mask says: the same input with and without right
    padding then scores differently. False for models with per-token logits."""
    ids = torch.arange(1, 5).clamp(max=model.get_input_embeddings().num_embeddings - 1)[None]
    pad = torch.full((1, 2), model.config.pad_token_id or 0)
    mask = torch.cat([torch.ones_like(ids), torch.zeros_like(pad)], dim=1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            embed = model.get_input_embeddings()
            alone = model(inputs_embeds=embed(ids)).logits
            padded = model(inputs_embeds=embed(torch.cat([ids, pad], dim=1)), attention_mask=mask).logits
    finally:
        model.train(was_training)
    return alone.dim() == 2 and not torch.allclose(alone, padded, atol=1e-4)


class PromptLearning(PeftLibraryMethod):
    """What the three methods share; a subclass says which peft config it builds (`peft_config`)."""

    method = "prompt_learning"
    default_lr = 1e-2
    extends_input = True       # the virtual tokens are input positions (False: a KV-cache prefix)

    def __init__(self, num_virtual_tokens: int = 20) -> None:
        if num_virtual_tokens < 1:
            raise UserError(f"peft.num_virtual_tokens={num_virtual_tokens}: needs at least 1 virtual token; the usual range is 8..100.")
        self.num_virtual_tokens = num_virtual_tokens

    def preflight(self, cfg) -> None:
        """Refuse packed batches and inputs the model's positions cannot hold with the virtual
        tokens (module docstring), from the config alone."""
        from llmtune.builders import build_task
        from llmtune.models import ROTARY, model_config, position_limit

        super().preflight(cfg)
        task, name, n = build_task(cfg), f"peft={self.method}", self.num_virtual_tokens
        if task.peft_task_type not in TASK_TYPES:
            raise UserError(
                f"{name} is supported for classification, token classification and causal LM tasks (peft task types {', '.join(TASK_TYPES)}); "
                f"task={task.name} ({task.peft_task_type}) is not supported with it; use peft=lora or peft=adapter."
            )
        if task.packs_samples:
            raise UserError(f"{name} does not work with packed batches (the virtual tokens break the per-sample position ids); set task.packing=false.")
        config = model_config(cfg.model)
        limit = position_limit(config) if config is not None else None
        rotary = any(getattr(config, key, None) is not None for key in ROTARY)  # rotary positions have no table to run out of
        if limit is not None and not rotary and task.max_length + n > limit[1]:
            raise UserError(
                f"{name}: task.max_length={task.max_length} + peft.num_virtual_tokens={n} = {task.max_length + n} positions, but the model "
                f"embeds at most {limit[1]} ({limit[0]}); lower task.max_length to {limit[1] - n} or peft.num_virtual_tokens to {limit[1] - task.max_length}."
            )

    def check(self, model, task) -> None:
        """Refuse a sequence classifier that would pool padding (module docstring); needs the built model."""
        if self.extends_input and task.peft_task_type == "SEQ_CLS" and pools_last_position(model):
            raise UserError(
                f"peft={self.method}: {type(model).__name__} pools the last position of its input, which prompt learning would make a padding "
                "token (it passes embeddings, not input_ids); use an encoder (e.g. model=tiny_bert, minilm) or peft=lora for this task."
            )

    def apply(self, model, task):
        self.check(model, task)
        return self.fit(super().apply(model, task))

    def load(self, final, auto, info: dict, base=None):
        return self.fit(super().load(final, auto, info, base=base))

    def fit(self, model):
        """The PeftModel made to score and generate as in training: logits of the real tokens
        only, and generation without a KV cache (peft 0.21 looks for the cache under
        `past_key_values`, transformers 5 passes `cache`: every token after the first would be
        computed with the virtual tokens out of place; without a cache each step is the
        training forward, exactly)."""
        if model.get_base_model().can_generate():
            model.get_base_model().generation_config.use_cache = False
        return strip_virtual_positions(model, self.num_virtual_tokens)

    def merged(self, model):
        """None: virtual tokens are inputs, not weights; there is nothing to fold into the base,
        so `export` writes the method as it is (PEFT format)."""
        return None
