"""Text classification (single label): accuracy and macro-F1 from scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmtune.errors import UserError
from llmtune.tasks import common
from llmtune.tasks.base import EvalContext, PredictContext, Task


@dataclass
class ClassificationTask(Task):
    name: str = "classification"
    max_length: int = 128
    builtin: str = "classification"

    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    main_metric = "accuracy"
    greater_is_better = True
    required_columns = ("text", "label")

    def __post_init__(self) -> None:
        self.labels: list[str] = []

    def texts(self, rows):
        yield from rows["text"]
        if "text_pair" in rows.column_names:
            yield from rows["text_pair"]

    def setup(self, raw) -> None:
        common.check_single_labels(raw, "label")
        self.labels = common.label_list(raw["train"]["label"])
        common.warn_single_class(raw, self.labels, "label")
        common.check_known_labels(raw, "label", self.labels, nested=False, unit="row")

    def check_eval(self, raw) -> None:
        common.check_single_labels(raw, "label")
        common.check_known_labels(raw, "label", self.labels, nested=False, unit="row")

    def model_kwargs(self) -> dict:
        return common.label_maps(self.labels)

    def full_lengths(self, rows, tokenizer) -> list[int]:
        pair = list(rows["text_pair"]) if "text_pair" in rows.column_names else None
        return [len(ids) for ids in tokenizer(list(rows["text"]), pair)["input_ids"]]

    def preprocess(self, raw, tokenizer, num_proc=None):
        label2id = {label: i for i, label in enumerate(self.labels)}
        columns = next(iter(raw.values())).column_names  # train's in training; evaluation has no train split
        has_pair = "text_pair" in columns

        def encode(batch):
            pair = batch["text_pair"] if has_pair else None
            out = tokenizer(batch["text"], pair, truncation=True, max_length=self.max_length)
            out["labels"] = [label2id[str(label)] for label in batch["label"]]
            return out

        return raw.map(encode, batched=True, remove_columns=columns, num_proc=num_proc, desc="tokenizing")

    def collator(self, tokenizer, train: bool):
        keys = tuple(k for k in tokenizer.model_input_names)

        def collate(features: list[dict]) -> dict:
            batch = common.pad_inputs(tokenizer, features, keys)
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
            return batch

        return collate

    def evaluate(self, model, loader, ctx: EvalContext) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        preds, golds = [], []

        def collect(logits, labels):
            p, g = ctx.accelerator.gather_for_metrics((logits.argmax(-1), labels))
            preds.append(p.cpu())
            golds.append(g.cpu())

        loss = common.run_eval(model, loader, ctx.accelerator, collect, forward=self.logits)
        y_pred, y_true = torch.cat(preds).numpy(), torch.cat(golds).numpy()
        accuracy = float(accuracy_score(y_true, y_pred))
        return {
            "accuracy": accuracy,
            "accuracy_stderr": common.proportion_stderr(accuracy, len(y_true)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(len(self.labels))), zero_division=0)),
            "loss": loss.loss,
        }

    # ---------------------------------------------------------------- predict / serve
    def read_input(self, item, where: str) -> dict:
        """A text, or {"text": ..., "text_pair": ...}."""
        if isinstance(item, str):
            return {"text": item}
        if isinstance(item, dict) and isinstance(item.get("text"), str) and isinstance(item.get("text_pair", ""), str):
            return {k: item[k] for k in ("text", "text_pair") if k in item}
        raise UserError(f"{where}: expected a text or an object with 'text' (and optionally 'text_pair'); got {str(item)[:60]!r}.")

    def input_length(self, row: dict) -> int:
        return len(row["text"]) + len(row.get("text_pair", ""))

    def predict(self, model, rows: list[dict], ctx: PredictContext) -> list[dict]:
        """The label, its probability and every label's probability."""
        tok, pairs = ctx.tokenizer, [row.get("text_pair") for row in rows]
        if len({p is None for p in pairs}) == 1:  # all single texts, or all pairs: one batched call
            enc = tok([row["text"] for row in rows], None if pairs[0] is None else pairs,
                      truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        else:  # the tokenizer takes no batch mixing both: encode each, then pad together
            enc = tok.pad([tok(row["text"], row.get("text_pair"), truncation=True, max_length=self.max_length) for row in rows], return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**enc.to(ctx.device)).logits.float(), dim=-1).cpu()
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": self.labels[best], "score": round(row[best], 6),
                        "probabilities": {label: round(p, 6) for label, p in zip(self.labels, row, strict=True)}})
        return out
