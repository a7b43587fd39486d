"""Text classification (single label): accuracy and macro-F1 from scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmtune.errors import UserError
from llmtune.tasks import common, prompts
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
        y_true, y_pred, loss = common.eval_argmax(model, loader, ctx, forward=self.logits)
        return {**self._metrics(y_true, y_pred), "loss": loss.loss}

    def _metrics(self, y_true, y_pred) -> dict[str, float]:
        """Accuracy (with its standard error) and macro-F1 of label ids (training and prompting)."""
        from sklearn.metrics import accuracy_score, f1_score

        accuracy = float(accuracy_score(y_true, y_pred))
        return {
            "accuracy": accuracy,
            "accuracy_stderr": common.proportion_stderr(accuracy, len(y_true)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(len(self.labels))), zero_division=0)),
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

    # ---------------------------------------------------------------- prompting baselines
    prompt_modes = ("zero_shot", "few_shot", "cloze")

    def _verbalizer(self, settings) -> list[str]:
        """The word for each label, in label order: the label's name unless prompting.verbalizer
        names another."""
        unknown = [str(k) for k in settings.verbalizer if str(k) not in self.labels]
        if unknown:
            raise UserError(f"prompting.verbalizer: {unknown[0]!r} is not a label of this data (labels: {', '.join(self.labels[:20])}); map labels to words, e.g. {{{self.labels[0]}: word}}.")
        words = [str(settings.verbalizer.get(label, label)) for label in self.labels]
        if len(set(words)) < len(words):
            raise UserError(f"prompting.verbalizer: two labels have the same word ({', '.join(words)}); give each label its own word.")
        return words

    def _query(self, row: dict, template: str, words: list[str]) -> str:
        return prompts.fill(template, "prompting.template", text=row["text"], text_pair=row.get("text_pair") or "", labels=", ".join(words))

    def prompt_predict(self, model, tokenizer, rows, demos, settings) -> list[str]:
        """The label whose word the model finds likeliest: after the prompt (a causal LM), or at
        the cloze pattern's masks (a masked LM). No text is generated or parsed."""
        words = self._verbalizer(settings)
        if settings.mode == "cloze":
            template = settings.template or CLOZE_TEMPLATE
            texts = [self._cloze_text(row) for row in rows]
            if demos and settings.finetune_steps:
                index = {label: i for i, label in enumerate(self.labels)}
                prompts.cloze_finetune(model, tokenizer, [self._cloze_text(d) for d in demos], [index[str(d["label"])] for d in demos], words, template, settings)
            scores = prompts.cloze_scores(model, tokenizer, texts, words, template, settings)
        else:
            has_pair = any(row.get("text_pair") for row in rows)
            template = settings.template or (PAIR_TEMPLATE if has_pair else TEMPLATE)
            chat = prompts.uses_chat(tokenizer, settings)
            word_of = dict(zip(self.labels, words, strict=True))
            shown = [(self._query(d, template, words), word_of[str(d["label"])]) for d in demos]
            texts = [prompts.render(tokenizer, shown, self._query(row, template, words), chat) for row in rows]
            # A plain prompt ends at "Answer:", so the word follows a space; a chat turn starts bare.
            scores = prompts.continuation_scores(model, tokenizer, texts, [w if chat else " " + w for w in words], settings, chat)
        return [self.labels[int(i)] for i in scores.argmax(-1)]

    @staticmethod
    def _cloze_text(row: dict) -> str:
        return row["text"] if not row.get("text_pair") else f"{row['text']} {row['text_pair']}"

    def prompt_metrics(self, rows, predictions) -> dict[str, float]:
        index = {label: i for i, label in enumerate(self.labels)}
        return self._metrics([index[str(row["label"])] for row in rows], [index[p] for p in predictions])


# Prompts of the prompting baselines (prompting.template replaces them). Decoders: the label's
# word is scored after "Answer:"; masked LMs: at {mask} (PET's pattern for sentiment).
TEMPLATE = "Classify the text as one of: {labels}.\nText: {text}\nAnswer:"
PAIR_TEMPLATE = "Classify the pair of texts as one of: {labels}.\nText 1: {text}\nText 2: {text_pair}\nAnswer:"
CLOZE_TEMPLATE = "{text} It was {mask}."
