"""Relation classification between two marked entities of a sentence (TACRED-style).

Each example is a tokenized sentence with a head and a tail entity (word spans, `end`
exclusive, each with a type) and the relation of head to tail, or `no_relation`. The entities
are marked in the text with typed markers, as words of their own:

    [E1:PER] Anna Berg [/E1:PER] works for [E2:ORG] Bluepeak Bank [/E2:ORG] .

The markers are special tokens of the tokenizer (Task.special_tokens; one start and one end
marker per entity type and role, the types from the training data) and get embedding rows of
their own. The model is the "entity start" classifier of Baldini Soares et al. (2019), with
the typed markers of Zhou & Chen (2021): the encoder's states at the two start markers,
concatenated, through a small MLP. It wraps any backbone AutoModel knows (BERT, MiniLM,
Llama, ...) as <Backbone>ForEntityRelation, saved and loaded as a transformers model.

Metric (scikit-learn): micro-F1 over the relations other than `task.negative_label` (the TACRED
convention: a pair with no relation counts only when it is predicted as one), with its
precision and recall, macro-F1 over the same relations, and accuracy over all classes.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from llmtune.errors import UserError
from llmtune.tasks import common
from llmtune.tasks.base import EvalContext, PredictContext, Task

log = logging.getLogger("llmtune")
ROLES = {"head": "E1", "tail": "E2"}
BOOTSTRAP_SAMPLES = 200


# ------------------------------------------------------------------ markers
def marker(role: str, entity_type: str | None, end: bool = False) -> str:
    """The marker word of an entity: [E1:PER] opens the head, [/E2:ORG] closes the tail;
    an untyped entity gets [E1] / [/E1]."""
    tag = ROLES[role] + (f":{entity_type}" if entity_type else "")
    return f"[/{tag}]" if end else f"[{tag}]"


def marker_tokens(entity_types: list[str]) -> list[str]:
    """Every marker the types can produce, in a fixed order ('' is the untyped marker)."""
    return [marker(role, kind, end) for kind in entity_types for role in ROLES for end in (False, True)]


def insert_markers(tokens: list[str], head: dict, tail: dict) -> tuple[list[str], list[int], tuple[int, int]]:
    """(words with the four markers inserted, word index of the head's and the tail's start
    marker, (first, last) word index of the markers). Spans do not overlap (checked before);
    where one entity ends at the word the other starts, the end marker comes first."""
    starts: dict[int, str] = {}
    ends: dict[int, str] = {}
    for role, span in (("head", head), ("tail", tail)):
        starts[span["start"]] = marker(role, span.get("type"))
        ends[span["end"]] = marker(role, span.get("type"), end=True)
    words, where = [], {}
    for i in range(len(tokens) + 1):
        for placed in (ends, starts):
            if i in placed:
                where[placed[i]] = len(words)
                words.append(placed[i])
        if i < len(tokens):
            words.append(tokens[i])
    starts_at = [where[marker("head", head.get("type"))], where[marker("tail", tail.get("type"))]]
    return words, starts_at, (min(where.values()), max(where.values()))


# ------------------------------------------------------------------ checks
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _span_problem(span, n: int) -> str | None:
    """Why an entity span is unusable, or None. `end` is exclusive."""
    if not isinstance(span, dict):
        return f"must be an object with start, end and type, got {str(span)[:40]!r}"
    start, end, kind = span.get("start"), span.get("end"), span.get("type")
    if not _is_int(start) or not _is_int(end):
        return f"needs whole-number 'start' and 'end' (word indices, end exclusive), got start={start!r} end={end!r}"
    if not 0 <= start < end <= n:
        return (f"span start={start} end={end} is outside the sentence's {n} tokens or empty; words are numbered from 0 "
                "and end is exclusive (a one-word entity at word i has start=i, end=i+1)")
    if kind is not None and (not isinstance(kind, str) or not kind.strip() or re.search(r"[\s\[\]]", kind)):
        return f"has type {kind!r}; a type is a word without spaces or brackets (e.g. PER), or null for an untyped entity"
    return None


def check_example(tokens, head, tail, where: str) -> None:
    """One example's tokens and entity spans; `where` names it (file and row, or input)."""
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise UserError(f"{where}: 'tokens' must be a non-empty list of words (strings); got {str(tokens)[:60]!r}.")
    for role, span in (("head", head), ("tail", tail)):
        problem = _span_problem(span, len(tokens))
        if problem:
            raise UserError(f"{where}: '{role}' {problem}.")
    if head["start"] < tail["end"] and tail["start"] < head["end"]:
        raise UserError(
            f"{where}: head (words {head['start']}-{head['end']}) and tail (words {tail['start']}-{tail['end']}) overlap; "
            "the two entities must be disjoint spans (end is exclusive)."
        )


def entity_types(ds) -> list[str]:
    """The entity types of a split ('' for untyped entities), sorted."""
    return sorted({span.get("type") or "" for column in ("head", "tail") for span in ds[column]})


# ------------------------------------------------------------------ the model
class EntityStartClassifier(nn.Module):
    """Concatenated states at the two start markers -> relation logits (Zhou & Chen 2021's MLP)."""

    def __init__(self, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(2 * hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_labels)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(torch.relu(self.dense(self.dropout(pair)))))


class _EntityRelationMixin:
    """The relation head over a backbone; combined with the backbone's PreTrainedModel class
    (BertPreTrainedModel, LlamaPreTrainedModel, ...) by `AutoModelForEntityRelation`, so that
    weight init, loading (the backbone under its usual prefix), saving, resizing and gradient
    checkpointing are the library's own."""

    def __init__(self, config) -> None:
        import inspect

        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        super().__init__(config)
        backbone = MODEL_MAPPING[type(config)]
        # No pooler: the head reads the marker states, and an unused pooler would hold LoRA layers.
        options = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(backbone.__init__).parameters else {}
        setattr(self, self.base_model_prefix, backbone(config, **options))
        text = config.get_text_config()
        dropout = getattr(config, "classifier_dropout", None) or getattr(text, "hidden_dropout_prob", None) or 0.1
        self.classifier = EntityStartClassifier(text.hidden_size, config.num_labels, float(dropout))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, entity_starts=None, labels=None, token_type_ids=None, inputs_embeds=None, **_):
        """`entity_starts`: (batch, 2) positions of the head's and the tail's start marker.
        Other keywords peft's wrappers pass (return_dict, output_attentions, ...) are ignored."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        states = self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **extra).last_hidden_state
        rows = torch.arange(states.shape[0], device=states.device)
        pair = torch.cat([states[rows, entity_starts[:, 0]], states[rows, entity_starts[:, 1]]], dim=-1)
        logits = self.classifier(pair)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


_CLASSES: dict[type, type] = {}


class AutoModelForEntityRelation:
    """Builds <Backbone>ForEntityRelation for any config AutoModel knows, as an Auto class
    would (`from_pretrained`, `from_config`); Task.model_class of task=relation."""

    CONFIG_KEYS = ("num_labels", "id2label", "label2id")

    @staticmethod
    def class_for(config) -> type:
        from transformers import PreTrainedModel
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        key = type(config)
        if key not in _CLASSES:
            try:
                backbone = MODEL_MAPPING[key]
            except KeyError:
                raise UserError(f"task=relation: no encoder class for model_type {config.model_type!r}; use a model transformers' AutoModel loads.") from None
            pretrained = next(c for c in backbone.__mro__ if PreTrainedModel in c.__bases__)
            name = backbone.__name__.removesuffix("Model") + "ForEntityRelation"
            _CLASSES[key] = type(name, (_EntityRelationMixin, pretrained), {"__module__": __name__})
        return _CLASSES[key]

    @classmethod
    def from_config(cls, config, **kwargs):
        return cls.class_for(config)._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, path, *args, config=None, **kwargs):
        from transformers import AutoConfig

        trust = kwargs.pop("trust_remote_code", False)
        if config is None:
            settings = {k: kwargs.pop(k) for k in cls.CONFIG_KEYS if k in kwargs}
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust, **settings)
        return cls.class_for(config).from_pretrained(path, *args, config=config, **kwargs)


# ------------------------------------------------------------------ metrics
def relation_metrics(y_true, y_pred, labels: list[str], negative: str) -> dict[str, float]:
    """Micro precision/recall/F1 and macro-F1 over the relations other than `negative`,
    accuracy over all classes, and the bootstrap standard error of micro-F1."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    positive = [i for i, label in enumerate(labels) if label != negative]
    if positive:
        precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=positive, average="micro", zero_division=0)
        macro = f1_score(y_true, y_pred, labels=positive, average="macro", zero_division=0)
    else:  # every training pair is negative: no relation to find
        precision = recall = f1 = macro = 0.0
    return {
        "micro_f1": float(f1),
        "micro_f1_stderr": micro_f1_stderr(np.asarray(y_true), np.asarray(y_pred), positive),
        "precision": float(precision),
        "recall": float(recall),
        "macro_f1": float(macro),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }


def micro_f1_stderr(y_true, y_pred, positive: list[int], samples: int = BOOTSTRAP_SAMPLES) -> float:
    """Standard error of micro-F1 by bootstrap over the examples (fixed seed: the same split
    gives the same value). F1 is no mean over examples, so sqrt(p(1-p)/n) does not apply as
    such; it is the floor when every resample scores the same (a perfect or an all-negative
    split), so that such a score is not given zero noise (load_best's margin)."""
    import numpy as np

    from llmtune.tasks.common import proportion_stderr

    n = len(y_true)
    if n < 2 or not positive:
        return proportion_stderr(0.0, n)
    predicted, gold = np.isin(y_pred, positive), np.isin(y_true, positive)
    tp = predicted & (y_pred == y_true)
    # Per example: 2 x true positive, and the false positive + false negative it adds.
    num, den = 2 * tp.astype(np.float64), (predicted.astype(np.float64) + gold)
    picks = np.random.default_rng(0).integers(0, n, size=(samples, n))
    totals = den[picks].sum(axis=1)
    scores = np.where(totals > 0, num[picks].sum(axis=1) / np.maximum(totals, 1e-12), 0.0)
    return float(scores.std(ddof=1)) or proportion_stderr(float(scores[0]), int(max(den.sum() / 2, 1)))


# ------------------------------------------------------------------ the task
@dataclass
class RelationTask(Task):
    name: str = "relation"
    max_length: int = 128
    negative_label: str = "no_relation"
    builtin: str = "relation"

    auto_class = "AutoModelForEntityRelation"
    # peft's generic wrapper (the head trains in full through modules_to_save, as for every task).
    # Not SEQ_CLS: prompt-learning methods would prepend virtual tokens there, moving the marker
    # positions the head reads; they refuse this task type instead.
    peft_task_type = "FEATURE_EXTRACTION"
    main_metric = "micro_f1"
    greater_is_better = True
    required_columns = ("tokens", "head", "tail", "relation")
    split_into_words = True
    predict_params = {"top_k": 0}

    def __post_init__(self) -> None:
        self.labels: list[str] = []
        self.entity_types: list[str] = []

    def model_class(self):
        return AutoModelForEntityRelation

    def special_tokens(self) -> list[str]:
        return marker_tokens(self.entity_types)

    def texts(self, rows):
        for tokens in rows["tokens"]:
            yield " ".join(tokens)

    # ---------------------------------------------------------------- checks
    def _check_split(self, raw, split: str) -> None:
        where = common.describe(raw, split)
        ds = raw[split]
        for n, tokens, head, tail in zip(common.source_rows(ds), ds["tokens"], ds["head"], ds["tail"], strict=True):
            check_example(tokens, head, tail, f"{where} row {n}")

    def _check_types(self, raw, splits) -> None:
        known = set(self.entity_types)
        for split in splits:
            ds = raw[split]
            for n, head, tail in zip(common.source_rows(ds), ds["head"], ds["tail"], strict=True):
                for role, span in (("head", head), ("tail", tail)):
                    if (span.get("type") or "") not in known:
                        self._unknown_type(f"{common.describe(raw, split)} row {n}", role, span.get("type"))

    def _unknown_type(self, where: str, role: str, kind) -> None:
        shown = ", ".join(t or "(untyped)" for t in self.entity_types)
        raise UserError(
            f"{where}: {role} type {kind!r} is not an entity type of the training data ({shown}), so the model has no marker "
            "for it; use one of those types, or train with examples of this type."
        )

    def setup(self, raw) -> None:
        for split in raw:
            self._check_split(raw, split)
        common.check_single_labels(raw, "relation")
        self.labels = common.label_list(raw["train"]["relation"])
        self.entity_types = entity_types(raw["train"])
        common.warn_single_class(raw, self.labels, "relation")
        if self.negative_label not in self.labels:
            log.info("no training pair is labelled %r (task.negative_label): micro-F1 counts every relation", self.negative_label)
        self._check_types(raw, [s for s in raw if s != "train"])
        common.check_known_labels(raw, "relation", self.labels, nested=False, unit="row")

    def check_eval(self, raw) -> None:
        for split in raw:
            self._check_split(raw, split)
        common.check_single_labels(raw, "relation")
        self._check_types(raw, list(raw))
        common.check_known_labels(raw, "relation", self.labels, nested=False, unit="row")

    def model_kwargs(self) -> dict:
        return common.label_maps(self.labels)

    # ---------------------------------------------------------------- tokenizing
    def _encode(self, tokenizer, examples: list[tuple[list, dict, dict]], where) -> list[dict]:
        """Token ids and the two start-marker positions of each (tokens, head, tail). A
        sentence longer than max_length tokens keeps a window of words around its markers;
        `where(i)` names example i when even the stretch between its two entities is longer."""
        if not tokenizer.is_fast:
            raise UserError(f"task=relation needs a fast tokenizer (word_ids); {type(tokenizer).__name__} is not. Use a model with a tokenizer.json.")
        marked = [insert_markers(tokens, head, tail) for tokens, head, tail in examples]
        enc = tokenizer([words for words, _, _ in marked], is_split_into_words=True)
        out = []
        for i, (words, starts, span) in enumerate(marked):
            word_ids, item = enc.word_ids(i), {k: v[i] for k, v in enc.items()}
            if len(word_ids) > self.max_length:
                a, b = self._window(word_ids, starts, span, where, i)
                one = tokenizer(words[a:b], is_split_into_words=True)
                item, word_ids, starts = dict(one), one.word_ids(), [s - a for s in starts]
            item["entity_starts"] = [word_ids.index(s) for s in starts]
            out.append(item)
        return out

    def _window(self, word_ids: list, starts: list[int], span: tuple[int, int], where, i: int) -> tuple[int, int]:
        """Words [a, b) to keep: all four markers if they fit, else the two start markers,
        then as much context on either side as fits in max_length tokens."""
        counts = Counter(w for w in word_ids if w is not None)
        budget = self.max_length - sum(w is None for w in word_ids)
        n = max(counts) + 1
        for a, b in (span, (min(starts), max(starts))):
            size = sum(counts[w] for w in range(a, b + 1))
            if size <= budget:
                break
        else:
            raise UserError(
                f"{where(i)}: the two entities are {size} tokens apart, more than task.max_length={self.max_length} allows; "
                "raise task.max_length or drop the example."
            )
        b += 1
        grew = True
        while grew:
            grew = False
            if a > 0 and size + counts[a - 1] <= budget:
                a, size, grew = a - 1, size + counts[a - 1], True
            if b < n and size + counts[b] <= budget:
                b, size, grew = b + 1, size + counts[b], True
        return a, b

    def full_lengths(self, rows, tokenizer) -> list[int]:
        marked = [insert_markers(t, h, tl)[0] for t, h, tl in zip(rows["tokens"], rows["head"], rows["tail"], strict=True)]
        return [len(ids) for ids in tokenizer(marked, is_split_into_words=True)["input_ids"]]

    def preprocess(self, raw, tokenizer, num_proc=None):
        from datasets import DatasetDict

        label2id = {label: i for i, label in enumerate(self.labels)}

        def encode(batch, indices, split: str):
            rows = common.source_rows(raw[split])
            items = self._encode(tokenizer, list(zip(batch["tokens"], batch["head"], batch["tail"], strict=True)),
                                lambda i: f"{common.describe(raw, split)} row {rows[indices[i]]}")
            out = {key: [item[key] for item in items] for key in items[0]}
            out["labels"] = [label2id[str(label)] for label in batch["relation"]]
            return out

        return DatasetDict({
            split: ds.map(encode, fn_kwargs={"split": split}, with_indices=True, batched=True, remove_columns=ds.column_names,
                          num_proc=num_proc, desc="tokenizing")
            for split, ds in raw.items()
        })

    def collator(self, tokenizer, train: bool):
        keys = tuple(tokenizer.model_input_names)

        def collate(features: list[dict]) -> dict:
            batch = common.pad_inputs(tokenizer, features, keys)
            batch["entity_starts"] = torch.tensor([f["entity_starts"] for f in features], dtype=torch.long)
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
            return batch

        return collate

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model, loader, ctx: EvalContext) -> dict[str, float]:
        y_true, y_pred, loss = common.eval_argmax(model, loader, ctx, forward=self.logits)
        return {**relation_metrics(y_true, y_pred, self.labels, self.negative_label), "loss": loss.loss}

    # ---------------------------------------------------------------- predict / serve
    def read_input(self, item, where: str) -> dict:
        """{"tokens": [...], "head": {"start", "end", "type"}, "tail": {...}} (end exclusive)."""
        if not isinstance(item, dict) or not all(k in item for k in ("tokens", "head", "tail")):
            raise UserError(f"{where}: expected an object with 'tokens' (a list of words), 'head' and 'tail' ({{start, end, type}}, end exclusive); got {str(item)[:60]!r}.")
        check_example(item["tokens"], item["head"], item["tail"], where)
        for role in ("head", "tail"):
            if (item[role].get("type") or "") not in self.entity_types:
                self._unknown_type(where, role, item[role].get("type"))
        return {"tokens": item["tokens"], "head": item["head"], "tail": item["tail"], "where": where}

    def input_length(self, row: dict) -> int:
        return len(row["tokens"])

    def predict(self, model, rows: list[dict], ctx: PredictContext) -> list[dict]:
        """The relation, its probability, and the probabilities of the top_k relations (every
        relation when top_k is 0)."""
        items = self._encode(ctx.tokenizer, [(r["tokens"], r["head"], r["tail"]) for r in rows], lambda i: rows[i]["where"])
        batch = common.pad_inputs(ctx.tokenizer, items, tuple(ctx.tokenizer.model_input_names))
        batch["entity_starts"] = torch.tensor([item["entity_starts"] for item in items], dtype=torch.long)
        with torch.no_grad():
            probs = torch.softmax(model(**{k: v.to(ctx.device) for k, v in batch.items()}).logits.float(), dim=-1).cpu()
        k = int(ctx.params.get("top_k", 0)) or len(self.labels)
        out = []
        for row in probs.tolist():
            ranked = sorted(range(len(row)), key=lambda j: -row[j])
            out.append({"label": self.labels[ranked[0]], "score": round(row[ranked[0]], 6),
                        "probabilities": {self.labels[j]: round(row[j], 6) for j in ranked[:k]}})
        return out

    # ---------------------------------------------------------------- what final/ records
    def state(self) -> dict:
        return {"labels": list(self.labels), "entity_types": list(self.entity_types)}

    def load_state(self, state: dict) -> None:
        self.labels = list(state.get("labels") or [])
        self.entity_types = list(state.get("entity_types") or [])
