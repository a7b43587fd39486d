"""Text classification (single label): accuracy and macro-F1 from scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmtune.tasks import common


@dataclass
class ClassificationTask:
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

    def model_kwargs(self, raw) -> dict:
        common.check_single_labels(raw, "label")
        self.labels = common.label_list(raw["train"]["label"])
        common.warn_single_class(raw, self.labels, "label")
        common.check_known_labels(raw, "label", self.labels, nested=False, unit="row")
        return common.label_maps(self.labels)

    def preprocess(self, raw, tokenizer, num_proc=None):
        label2id = {label: i for i, label in enumerate(self.labels)}
        has_pair = "text_pair" in raw["train"].column_names

        def encode(batch):
            pair = batch["text_pair"] if has_pair else None
            out = tokenizer(batch["text"], pair, truncation=True, max_length=self.max_length)
            out["labels"] = [label2id[str(label)] for label in batch["label"]]
            return out

        return raw.map(encode, batched=True, remove_columns=raw["train"].column_names, num_proc=num_proc, desc="tokenizing")

    def collator(self, tokenizer, train: bool):
        keys = tuple(k for k in tokenizer.model_input_names)

        def collate(features: list[dict]) -> dict:
            batch = common.pad_inputs(tokenizer, features, keys)
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
            return batch

        return collate

    def evaluate(self, model, dataloader, accelerator) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        preds, golds = [], []

        def collect(logits, labels):
            p, g = accelerator.gather_for_metrics((logits.argmax(-1), labels))
            preds.append(p.cpu())
            golds.append(g.cpu())

        loss = common.run_eval(model, dataloader, accelerator, collect)
        y_pred, y_true = torch.cat(preds).numpy(), torch.cat(golds).numpy()
        accuracy = float(accuracy_score(y_true, y_pred))
        return {
            "accuracy": accuracy,
            "accuracy_stderr": common.proportion_stderr(accuracy, len(y_true)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(len(self.labels))), zero_division=0)),
            "loss": loss.loss,
        }
