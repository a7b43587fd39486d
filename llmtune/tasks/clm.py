"""Causal-LM (next-token) pretraining, GPT-style: texts joined with EOS, cut into blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmtune.errors import UserError
from llmtune.tasks import common
from llmtune.tasks.base import IGNORE_INDEX, PredictContext, Task
from llmtune.tasks.generation import GENERATION_DEFAULTS, encode_prompts, generate_texts


def shift_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Labels for next-token prediction: position t predicts token t+1; no target after the
    last real token. Built from the attention mask, not the pad id, so an EOS that doubles as
    the pad token is still learned."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    labels[:, :-1][attention_mask[:, 1:] == 0] = IGNORE_INDEX
    return labels


@dataclass
class CLMTask(Task):
    name: str = "clm"
    max_length: int = 128
    builtin: str = "text"
    is_pretraining: bool = True

    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    main_metric = "loss"
    greater_is_better = False
    required_columns = ("text",)
    predict_params = GENERATION_DEFAULTS

    def preprocess(self, raw, tokenizer, num_proc=None):
        if tokenizer.eos_token_id is None:
            raise UserError("task=clm needs a tokenizer with an end-of-sequence token to separate texts; this one has none.")
        eos = tokenizer.eos_token_id

        def encode(batch):
            ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
            return {"input_ids": common.pack_into_blocks([row + [eos] for row in ids], self.max_length)}

        return raw.map(encode, batched=True, remove_columns=next(iter(raw.values())).column_names, num_proc=num_proc, desc="tokenizing")

    def collator(self, tokenizer, train: bool):
        def collate(features: list[dict]) -> dict:
            batch = common.pad_inputs(tokenizer, features, ("input_ids",))
            batch["labels"] = shift_labels(batch["input_ids"], batch["attention_mask"])
            return batch

        return collate

    def read_input(self, item, where: str) -> dict:
        row = super().read_input(item, where)
        return {"text": row["text"]}

    def predict(self, model, rows: list[dict], ctx: PredictContext) -> list[dict]:
        """The continuation of each text (greedy unless temperature > 0)."""
        inputs = encode_prompts(ctx.tokenizer, [row["text"] for row in rows], add_special_tokens=False)
        return [{"generated": text} for text in generate_texts(model, ctx.tokenizer, inputs, ctx.params)]
