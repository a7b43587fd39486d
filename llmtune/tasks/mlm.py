"""Masked-language-model pretraining (BERT-style) with dynamic masking."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from llmtune.errors import UserError
from llmtune.tasks import common
from llmtune.tasks.base import IGNORE_INDEX, PredictContext, Task, model_inputs


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, tokenizer, probability: float, generator=None):
    """BERT masking: pick `probability` of the maskable positions; of those 80% become [MASK],
    10% a random token, 10% stay. Returns (inputs, labels) with -100 on unpicked positions."""
    inputs, labels = input_ids.clone(), input_ids.clone()
    picked = (torch.rand(input_ids.shape, generator=generator) < probability) & maskable
    labels[~picked] = IGNORE_INDEX
    roll = torch.rand(input_ids.shape, generator=generator)
    inputs[picked & (roll < 0.8)] = tokenizer.mask_token_id
    randomise = picked & (roll >= 0.8) & (roll < 0.9)
    inputs[randomise] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[randomise]
    return inputs, labels


@dataclass
class MLMTask(Task):
    name: str = "mlm"
    max_length: int = 128
    mlm_probability: float = 0.15
    builtin: str = "text"
    is_pretraining: bool = True

    auto_class = "AutoModelForMaskedLM"
    peft_task_type = "FEATURE_EXTRACTION"  # peft has no MLM task type; adapters still apply
    main_metric = "loss"
    greater_is_better = False
    required_columns = ("text",)
    predict_params = {"top_k": 5}

    def preprocess(self, raw, tokenizer, num_proc=None):
        if tokenizer.mask_token_id is None:
            raise UserError("task=mlm needs a tokenizer with a mask token; this one has none (a decoder tokenizer?). Use task=clm or a BERT-style model.")
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        inner = self.max_length - 2

        def encode(batch):
            ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
            blocks = common.pack_into_blocks([row + [sep] for row in ids], inner)
            return {"input_ids": [[cls, *b, sep] for b in blocks]}

        return raw.map(encode, batched=True, remove_columns=next(iter(raw.values())).column_names, num_proc=num_proc, desc="tokenizing")

    def collator(self, tokenizer, train: bool):
        specials = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        probability = self.mlm_probability

        def collate(features: list[dict]) -> dict:
            if train:  # fresh masks every time a block is seen (the loop seeds the RNG per batch)
                batch = common.pad_inputs(tokenizer, features, ("input_ids",))
                ids = batch["input_ids"]
                batch["input_ids"], batch["labels"] = mask_tokens(ids, ~torch.isin(ids, specials), tokenizer, probability)
                return batch
            # Evaluation: each block gets the same masks every time, whatever it is batched
            # or padded with — the generator is seeded from the block's own tokens.
            masked, labels = [], []
            for feature in features:
                ids = torch.tensor(feature["input_ids"])
                inputs, targets = mask_tokens(ids, ~torch.isin(ids, specials), tokenizer, probability, _row_generator(ids))
                masked.append({"input_ids": inputs.tolist()})
                labels.append(targets.tolist())
            batch = common.pad_inputs(tokenizer, masked, ("input_ids",))
            batch["labels"] = common.pad_labels(labels, batch["input_ids"].shape[1])
            return batch

        return collate

    def logits(self, model, batch: dict, labels: torch.Tensor):
        """Logits at the masked positions only. The vocabulary projection is most of an MLM
        head's cost and 85% of positions have no label, so the decoder sees just the hidden
        states it is scored on (a pre-hook gathers them); the labels are gathered to match."""
        picked = labels != IGNORE_INDEX
        decoder = _decoder(model)
        if decoder is None:  # a model without get_output_embeddings: every position
            return model(**model_inputs(batch)).logits, labels
        decoder._llmtune_picked = picked
        try:
            logits = model(**model_inputs(batch)).logits
        finally:
            decoder._llmtune_picked = None
        return logits, labels[picked]

    def read_input(self, item, where: str) -> dict:
        row = super().read_input(item, where)
        return {"text": row["text"]}

    def predict(self, model, rows: list[dict], ctx: PredictContext) -> list[dict]:
        """The top-k fills of each mask token in each text (task.predict top_k=5)."""
        tok, k = ctx.tokenizer, int(ctx.params.get("top_k", 5))
        enc = tok([row["text"] for row in rows], truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc.to(ctx.device)).logits.float().cpu()
        out = []
        for i in range(len(rows)):
            masks = []
            for position in (enc["input_ids"][i] == tok.mask_token_id).nonzero().flatten().tolist():
                probs = torch.softmax(logits[i, position], dim=-1)
                top = torch.topk(probs, k=min(k, probs.numel()))
                masks.append([{"token": tok.convert_ids_to_tokens(int(t)), "score": round(float(p), 6)}
                              for p, t in zip(top.values, top.indices, strict=True)])
            out.append({"masks": masks})
        return out


def _row_generator(row: torch.Tensor) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(row.numpy().tobytes()))


def _decoder(model):
    """The vocabulary projection of a masked-LM model, with the gathering pre-hook attached
    once (a persistent hook keeps a compiled model's graph stable; it does nothing unless
    `_llmtune_picked` is set for the current forward)."""
    inner = model
    while hasattr(inner, "module"):  # DDP / FSDP wrappers
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # a PEFT model
        inner = inner.get_base_model()
    decoder = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if decoder is not None and not hasattr(decoder, "_llmtune_picked"):
        decoder._llmtune_picked = None
        decoder.register_forward_pre_hook(_gather_picked)
    return decoder


def _gather_picked(module, args):
    picked = module._llmtune_picked
    if picked is None:
        return None
    return (args[0][picked],) + tuple(args[1:])
