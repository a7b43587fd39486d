"""Named-entity recognition: word -> subword label alignment, seqeval entity-level metrics."""

from __future__ import annotations

from dataclasses import dataclass

from llmtune.errors import UserError
from llmtune.tasks import common
from llmtune.tasks.base import IGNORE_INDEX


def align_labels(word_ids: list[int | None], word_labels: list[int], *, label_all_tokens: bool, b_to_i: dict[int, int]) -> list[int]:
    """Labels per subword. The first subword of a word carries the word's label; later subwords
    get -100, or with `label_all_tokens` the label too (B-X turned into I-X so that one entity
    is not read as several). Special tokens (word id None) always get -100."""
    aligned, previous = [], None
    for word in word_ids:
        if word is None:
            aligned.append(IGNORE_INDEX)
        elif word != previous:
            aligned.append(word_labels[word])
        elif label_all_tokens:
            aligned.append(b_to_i.get(word_labels[word], word_labels[word]))
        else:
            aligned.append(IGNORE_INDEX)
        previous = word
    return aligned


@dataclass
class NERTask:
    name: str = "ner"
    max_length: int = 128
    label_all_tokens: bool = False
    builtin: str = "ner"

    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    main_metric = "f1"
    greater_is_better = True
    required_columns = ("tokens", "tags")

    def __post_init__(self) -> None:
        self.labels: list[str] = []

    def texts(self, rows):
        for tokens in rows["tokens"]:
            yield " ".join(tokens)

    def model_kwargs(self, raw) -> dict:
        self.labels = common.label_list(tag for tags in raw["train"]["tags"] for tag in tags)
        common.check_known_labels(raw, "tags", self.labels, nested=True)
        return common.label_maps(self.labels)

    def _b_to_i(self) -> dict[int, int]:
        index = {label: i for i, label in enumerate(self.labels)}
        return {i: index[f"I-{label[2:]}"] for label, i in index.items() if label.startswith("B-") and f"I-{label[2:]}" in index}

    def preprocess(self, raw, tokenizer, num_proc=None):
        if not tokenizer.is_fast:
            raise UserError(f"task=ner needs a fast tokenizer (word_ids); {type(tokenizer).__name__} is not. Use a model with a tokenizer.json.")
        label2id = {label: i for i, label in enumerate(self.labels)}
        b_to_i = self._b_to_i()

        def encode(batch):
            out = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=self.max_length)
            out["labels"], out["word_labels"] = [], []
            for i, tags in enumerate(batch["tags"]):
                ids = [label2id[str(t)] for t in tags]
                word_ids = out.word_ids(i)
                out["labels"].append(align_labels(word_ids, ids, label_all_tokens=self.label_all_tokens, b_to_i=b_to_i))
                # Evaluation always reads the first subword of each word, whatever training did.
                out["word_labels"].append(align_labels(word_ids, ids, label_all_tokens=False, b_to_i=b_to_i))
            return out

        return raw.map(encode, batched=True, remove_columns=raw["train"].column_names, num_proc=num_proc, desc="tokenizing")

    def collator(self, tokenizer, train: bool):
        keys = tuple(tokenizer.model_input_names)
        label_key = "labels" if train else "word_labels"

        def collate(features: list[dict]) -> dict:
            batch = common.pad_inputs(tokenizer, features, keys)
            batch["labels"] = common.pad_labels([f[label_key] for f in features], batch["input_ids"].shape[1])
            return batch

        return collate

    def evaluate(self, model, dataloader, accelerator) -> dict[str, float]:
        from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

        pred_tags, gold_tags = [], []

        def collect(logits, labels):
            preds = accelerator.pad_across_processes(logits.argmax(-1), dim=1, pad_index=IGNORE_INDEX)
            labels = accelerator.pad_across_processes(labels, dim=1, pad_index=IGNORE_INDEX)
            preds, labels = accelerator.gather_for_metrics((preds, labels))
            for p_row, g_row in zip(preds.cpu().tolist(), labels.cpu().tolist(), strict=True):
                keep = [(p, g) for p, g in zip(p_row, g_row, strict=True) if g != IGNORE_INDEX]
                pred_tags.append([self.labels[p] for p, _ in keep])
                gold_tags.append([self.labels[g] for _, g in keep])

        loss = common.run_eval(model, dataloader, accelerator, collect)
        return {
            "precision": float(precision_score(gold_tags, pred_tags, zero_division=0)),
            "recall": float(recall_score(gold_tags, pred_tags, zero_division=0)),
            "f1": float(f1_score(gold_tags, pred_tags, zero_division=0)),
            "accuracy": float(accuracy_score(gold_tags, pred_tags)),
            "loss": loss,
        }
