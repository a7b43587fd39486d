"""Extractive question answering (SQuAD v1.1 and v2.0): the answer is a span of the context.

Columns: context, question, answers = {"text": [...], "answer_start": [...]} (character offsets
into the context; empty lists: the question has no answer in the context, SQuAD v2.0). A SQuAD
JSON file is flattened to these rows by the reader (llmtune/data/squad.py).

- Windows: question + context are tokenized together (fast tokenizer, offset mappings); a
  context too long for task.max_length is split into windows that overlap by task.doc_stride
  tokens, each a training example of its own.
- Labels: per window the start and end token of the (first) answer, or the CLS token when the
  answer is not inside the window or there is none: two labelled positions per window. `logits`
  returns the start and end scores as [batch, 2, length], so the loss is the default
  cross-entropy summed over those two positions, and the engine divides by 2 per window: the
  mean of the start and end losses, as transformers' QA heads compute it.
- Answers: n-best post-processing over all windows of an example: the task.n_best best start
  and end tokens of each window, pairs inside the context (question tokens are never
  candidates), at most task.max_answer_length tokens long, scored by start + end logit, mapped
  back to characters of the context. With unanswerable questions (task.version_2_with_negative,
  by default decided by the data), the no-answer score is the CLS start + end logit (the lowest
  over the windows) and "no answer" wins when it beats the best span by more than
  task.null_score_diff_threshold.
- Metrics (llmtune/tasks/squad.py): exact match and F1 after the official SQuAD normalisation,
  the best over the gold answers; for v2 also HasAns_/NoAns_ exact and F1. F1 is the main metric.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmtune.errors import UserError
from llmtune.tasks import common
from llmtune.tasks.base import EvalContext, PredictContext, Task, model_inputs
from llmtune.tasks.squad import squad_metrics

log = logging.getLogger("llmtune")
ANSWERS_SHAPE = '{"text": ["..."], "answer_start": [N]} (empty lists: no answer)'
NOT_CONTEXT = (-1, -1)   # the offsets stored for a token outside the context (question, specials)


# ------------------------------------------------------------------ reading the data
def answer_lists(value, where: str = "answers") -> tuple[list[str], list[int]]:
    """(texts, starts) of an answers value: {"text": [...], "answer_start": [...]}, or a SQuAD-
    style list of {"text", "answer_start"} objects. One line naming `where` when it is neither."""
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
    elif isinstance(value, list) and all(isinstance(a, dict) for a in value):
        texts, starts = [a.get("text") for a in value], [a.get("answer_start") for a in value]
    else:
        texts = starts = None
    if not isinstance(texts, list) or not isinstance(starts, list):
        raise UserError(f"{where}: 'answers' is {str(value)[:60]!r}; write it as {ANSWERS_SHAPE}.")
    if len(texts) != len(starts):
        raise UserError(f"{where}: 'answers' has {len(texts)} texts but {len(starts)} answer_start values; give one start per answer text.")
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: answer text {text!r} is not a non-empty string; write {ANSWERS_SHAPE}.")
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise UserError(f"{where}: answer_start {start!r} is not a character offset (a whole number >= 0) into the context.")
    return texts, starts


def check_row(context, question, answers, where: str) -> bool:
    """Raise UserError for a malformed row; return whether it has an answer."""
    for name, value in (("context", context), ("question", question)):
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: '{name}' is {str(value)[:40]!r}; every row needs a non-empty {name} text.")
    texts, starts = answer_lists(answers, where)
    for text, start in zip(texts, starts, strict=True):
        found = context[start:start + len(text)]
        if found != text:
            elsewhere = context.find(text)
            hint = f"the text occurs at character {elsewhere}" if elsewhere >= 0 else "the text does not occur in the context"
            raise UserError(
                f"{where}: answer {text!r} does not start at answer_start {start} (the context has {found!r} there; {hint}); "
                "answer_start is the 0-based character offset of the answer in the context."
            )
    return bool(texts)


def check_split(raw, split: str) -> str | None:
    """Check every row of a split; return where its first unanswerable question is (None: none)."""
    ds = raw[split]
    described = common.describe(raw, split)
    ids = ds["id"] if "id" in ds.column_names else [None] * len(ds)
    first = None
    for row, qid, context, question, answers in zip(common.source_rows(ds), ids, ds["context"], ds["question"], ds["answers"], strict=True):
        where = f"{described} row {row}" + (f" (id {qid})" if qid is not None else "")
        if not check_row(context, question, answers, where) and first is None:
            first = where
    return first


# ------------------------------------------------------------------ windows and labels
def encode_windows(tokenizer, questions: Sequence[str], contexts: Sequence[str], max_length: int, stride: int):
    """Question + context pairs tokenized into windows of at most `max_length` tokens, the
    contexts split with `stride` tokens of overlap; a window's `overflow_to_sample_mapping`
    names its pair. Questions longer than half a window are cut (the context needs the room)."""
    if not tokenizer.is_fast:
        raise UserError(f"task=qa needs a fast tokenizer (offset mappings); {type(tokenizer).__name__} is not. Use a model with a tokenizer.json.")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    limit = max(1, max_length // 2 - specials - 2)  # leaves more than doc_stride (< max_length // 2) for the context
    questions = [q.lstrip() for q in questions]  # some SQuAD v2.0 questions start with many spaces
    spans = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    cut = [q if len(s) <= limit else q[: s[limit - 1][1]] for q, s in zip(questions, spans, strict=True)]
    if cut != questions:
        log.warning("%d question(s) longer than %d tokens were cut to fit task.max_length=%d", sum(a != b for a, b in zip(cut, questions, strict=True)), limit, max_length)
    return tokenizer(cut, list(contexts), truncation="only_second", max_length=max_length, stride=stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True)


def context_offsets(windows, w: int) -> list[tuple[int, int]]:
    """Character offsets into the context of each token of window `w`; NOT_CONTEXT elsewhere."""
    return [tuple(o) if s == 1 else NOT_CONTEXT for o, s in zip(windows["offset_mapping"][w], windows.sequence_ids(w), strict=True)]


def cls_index(input_ids: list[int], tokenizer) -> int:
    """Where a window's no-answer label goes: the CLS token (the first token if there is none)."""
    cls = tokenizer.cls_token_id
    return input_ids.index(cls) if cls is not None and cls in input_ids else 0


def window_labels(offsets: Sequence[tuple[int, int]], span: tuple[int, int] | None, cls: int) -> tuple[int, int]:
    """(start token, end token) of the character span [start, end) in a window, or (cls, cls)
    when there is no answer or it is not wholly inside the window's part of the context."""
    inside = [i for i, o in enumerate(offsets) if o[0] >= 0]
    if span is None or not inside:
        return cls, cls
    start_char, end_char = span
    if offsets[inside[0]][0] > start_char or offsets[inside[-1]][1] < end_char:
        return cls, cls
    start = max(i for i in inside if offsets[i][0] <= start_char)
    end = min(i for i in inside if offsets[i][1] >= end_char)
    return start, max(start, end)


# ------------------------------------------------------------------ post-processing
def window_candidates(start: torch.Tensor, end: torch.Tensor, offsets: Sequence[tuple[int, int]], n_best: int, max_answer_length: int) -> list[tuple[float, int, int]]:
    """The best spans of one window as (score, start char, end char), best first: pairs of its
    n_best best start and end tokens, both in the context, end not before start, at most
    max_answer_length tokens; the score is start logit + end logit."""
    n = len(offsets)
    start, end = start[:n].float(), end[:n].float()
    starts = torch.topk(start, min(n_best, n)).indices.tolist()
    ends = torch.topk(end, min(n_best, n)).indices.tolist()
    spans = [
        (float(start[s] + end[e]), offsets[s][0], offsets[e][1])
        for s in starts if offsets[s][0] >= 0
        for e in ends if offsets[e][0] >= 0 and s <= e < s + max_answer_length
    ]
    return sorted(spans, reverse=True)[:n_best]


def _softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


def best_answer(windows: Sequence[dict], context: str, *, n_best: int, with_negative: bool, threshold: float) -> dict:
    """The answer to one question from its windows ({"null": no-answer score, "spans":
    window_candidates}): the best span over all windows, or no answer (v2) when the lowest
    no-answer score beats it by more than `threshold`. `score` is the answer's probability
    among the n-best spans (and no answer, v2)."""
    best: dict[tuple[int, int], float] = {}
    for window in windows:  # overlapping windows find the same span: keep its best score
        for score, s, e in window["spans"]:
            best[(s, e)] = max(score, best.get((s, e), -math.inf))
    spans = sorted(((score, s, e) for (s, e), score in best.items()), reverse=True)[:n_best]
    null = min((w["null"] for w in windows), default=0.0)
    probs = _softmax([s[0] for s in spans] + ([null] if with_negative else [])) if spans or with_negative else []
    out: dict = {"answer": "", "start": None, "end": None, "score": 0.0}
    if spans:
        score, s, e = spans[0]
        out = {"answer": context[s:e], "start": s, "end": e, "score": round(probs[0], 6)}
    if with_negative:
        diff = null - spans[0][0] if spans else math.inf
        if diff > threshold:
            out = {"answer": "", "start": None, "end": None, "score": round(probs[-1], 6)}
        out["no_answer"] = out["start"] is None
        out["null_score_diff"] = round(diff, 6) if spans else None
    return out


@dataclass
class QATask(Task):
    name: str = "qa"
    max_length: int = 256
    doc_stride: int = 64
    n_best: int = 20
    max_answer_length: int = 30
    version_2_with_negative: bool | None = None
    null_score_diff_threshold: float = 0.0
    builtin: str = "qa"

    auto_class = "AutoModelForQuestionAnswering"
    # Not QUESTION_ANS: peft's PeftModelForQuestionAnswering (0.21) takes token_type_ids and
    # drops them, so a BERT-style model under LoRA would never see which tokens are the
    # question and which the context, and its merged export would answer differently. The
    # feature-extraction wrapper hands every input on; the QA head still trains in full and is
    # saved with the adapter (the PEFT methods pass it as modules_to_save).
    peft_task_type = "FEATURE_EXTRACTION"
    main_metric = "f1"
    greater_is_better = True
    required_columns = ("context", "question", "answers")

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or self.max_length < 32:
            raise UserError(f"task.max_length={self.max_length}: task=qa needs at least 32 tokens per window (question + part of the context), e.g. 256.")
        if not 0 <= self.doc_stride < self.max_length // 2:
            raise UserError(
                f"task.doc_stride={self.doc_stride}: the overlap of two windows must be 0 or more and less than half of "
                f"task.max_length={self.max_length}, e.g. task.doc_stride={self.max_length // 4}."
            )
        for key in ("n_best", "max_answer_length"):
            if getattr(self, key) < 1:
                raise UserError(f"task.{key}={getattr(self, key)}: must be at least 1.")
        self.labels: list[str] = []
        self.with_negative = bool(self.version_2_with_negative)  # decided by the data in setup when null

    def texts(self, rows):
        for question, context in zip(rows["question"], rows["context"], strict=True):
            yield question
            yield context

    def full_lengths(self, rows, tokenizer) -> list[int]:
        """Tokens of question + context: longer than max_length means several windows."""
        return [len(ids) for ids in tokenizer(list(rows["question"]), list(rows["context"]))["input_ids"]]

    # ---------------------------------------------------------------- data
    def setup(self, raw) -> None:
        """Check every row (texts, answers that match the context) and settle SQuAD v1.1 or v2.0."""
        unanswerable = [where for split in raw for where in [check_split(raw, split)] if where]
        if self.version_2_with_negative is None:
            self.with_negative = bool(unanswerable)
            log.info("task=qa: %s", "some questions have no answer (SQuAD v2.0): no-answer predictions on" if unanswerable
                     else "every question has an answer (SQuAD v1.1)")
        elif unanswerable and not self.version_2_with_negative:
            raise UserError(
                f"{unanswerable[0]}: the question has no answer, but task.version_2_with_negative=false (SQuAD v1.1: every question "
                "has one); set task.version_2_with_negative=true (or null: decided by the data), or give the row its answer."
            )

    def check_eval(self, raw) -> None:
        unanswerable = [where for split in raw for where in [check_split(raw, split)] if where]
        if unanswerable and not self.with_negative:
            raise UserError(
                f"{unanswerable[0]}: the question has no answer, but this model was trained without unanswerable questions "
                "(SQuAD v1.1) and never predicts none; evaluate it on answerable questions only."
            )

    def preprocess(self, raw, tokenizer, num_proc=None):
        from datasets import DatasetDict

        def encode(batch, indices, keep_offsets: bool):
            windows = encode_windows(tokenizer, batch["question"], batch["context"], self.max_length, self.doc_stride)
            out = {k: windows[k] for k in ("input_ids", "token_type_ids") if k in windows}
            out.update(labels=[], example=[], cls=[], offsets=[])
            for w, i in enumerate(windows["overflow_to_sample_mapping"]):
                texts, starts = answer_lists(batch["answers"][i])
                span = (starts[0], starts[0] + len(texts[0])) if texts else None
                offsets = context_offsets(windows, w)
                cls = cls_index(windows["input_ids"][w], tokenizer)
                out["labels"].append(list(window_labels(offsets, span, cls)))
                out["example"].append(indices[i])  # the row of the raw split: evaluation joins windows on it
                out["cls"].append(cls)
                out["offsets"].append(offsets if keep_offsets else [])
            return out

        # Training windows need no offsets (only evaluation maps answers back); evaluation of a
        # single split (the `evaluate` verb) may score "train" too.
        return DatasetDict({
            split: ds.map(encode, batched=True, with_indices=True, fn_kwargs={"keep_offsets": split != "train" or len(raw) == 1},
                          remove_columns=ds.column_names, num_proc=num_proc, desc="tokenizing")
            for split, ds in raw.items()
        })

    def collator(self, tokenizer, train: bool):
        keys = tuple(tokenizer.model_input_names)

        def collate(features: list[dict]) -> dict:
            batch = common.pad_inputs(tokenizer, features, keys)
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
            if not train:  # metadata (not tensors): which example each window is, and its offsets
                for key in ("example", "cls", "offsets"):
                    batch[key] = [f[key] for f in features]
            return batch

        return collate

    # ---------------------------------------------------------------- training
    def logits(self, model, batch: dict, labels):
        """Start and end scores as [batch, 2, length] for the labels [batch, 2] (start, end);
        padding can never be chosen."""
        out = model(**model_inputs(batch))
        scores = torch.stack((out.start_logits, out.end_logits), dim=1)
        padding = batch["attention_mask"][:, None, :] == 0
        return scores.masked_fill(padding, torch.finfo(scores.dtype).min), labels

    def fingerprint(self) -> dict:
        return {"task": self.name, "max_length": self.max_length, "doc_stride": self.doc_stride}

    # ---------------------------------------------------------------- evaluation
    def _windows(self, scores: torch.Tensor, examples: list, cls: list, offsets: list) -> list[dict]:
        """Candidates of each window of a batch (small Python objects, gathered across processes)."""
        scores = scores.float().cpu()
        return [
            {"example": ex, "null": float(scores[i, 0, c] + scores[i, 1, c]),
             "spans": window_candidates(scores[i, 0], scores[i, 1], off, self.n_best, self.max_answer_length)}
            for i, (ex, c, off) in enumerate(zip(examples, cls, offsets, strict=True))
        ]

    def evaluate(self, model, loader, ctx: EvalContext) -> dict[str, float]:
        windows: list[dict] = []
        meta: dict = {}

        def forward(model, batch, labels):
            meta.update(example=batch["example"], cls=batch["cls"], offsets=batch["offsets"])  # run_eval shows collect logits only
            return self.logits(model, batch, labels)

        def collect(logits, labels):
            windows.extend(ctx.gather_objects(self._windows(logits, meta["example"], meta["cls"], meta["offsets"])))

        loss = common.run_eval(model, loader, ctx.accelerator, collect, forward=forward)
        by_example: dict[int, list[dict]] = defaultdict(list)
        for window in windows:
            by_example[window["example"]].append(window)
        raw = ctx.raw
        predictions = [
            best_answer(by_example[i], context, n_best=self.n_best, with_negative=self.with_negative, threshold=self.null_score_diff_threshold)["answer"]
            for i, context in enumerate(raw["context"])
        ]
        golds = [answer_lists(a)[0] for a in raw["answers"]]
        ids = raw["id"] if "id" in raw.column_names else range(1, len(raw) + 1)
        ctx.report_predictions([{"id": i, "question": q, "prediction": p, "answers": g}
                                for i, q, p, g in zip(ids, raw["question"], predictions, golds, strict=True)])
        return {**squad_metrics(predictions, golds, with_negative=self.with_negative), "loss": loss.loss}

    # ---------------------------------------------------------------- predict / serve
    def read_input(self, item, where: str) -> dict:
        """An object {"question": ..., "context": ...}."""
        if isinstance(item, dict) and all(isinstance(item.get(k), str) and item[k].strip() for k in ("question", "context")):
            return {"question": item["question"], "context": item["context"]}
        raise UserError(f'{where}: expected an object {{"question": "...", "context": "..."}} with both texts non-empty; got {str(item)[:60]!r}.')

    def input_length(self, row: dict) -> int:
        return len(row["question"]) + len(row["context"])

    def predict(self, model, rows: list[dict], ctx: PredictContext) -> list[dict]:
        """Per question: answer text, its start and end character offsets in the context, and its
        probability; with no-answer (v2) also whether there is none."""
        tok = ctx.tokenizer
        windows = encode_windows(tok, [r["question"] for r in rows], [r["context"] for r in rows], self.max_length, self.doc_stride)
        features = [{"input_ids": ids, **({"token_type_ids": windows["token_type_ids"][w]} if "token_type_ids" in windows else {})}
                    for w, ids in enumerate(windows["input_ids"])]
        batch = common.pad_inputs(tok, features, tuple(tok.model_input_names))
        with torch.no_grad():
            scores, _ = self.logits(model, {k: v.to(ctx.device) for k, v in batch.items()}, None)
        found = self._windows(
            scores, list(windows["overflow_to_sample_mapping"]),
            [cls_index(ids, tok) for ids in windows["input_ids"]], [context_offsets(windows, w) for w in range(len(features))],
        )
        by_row: dict[int, list[dict]] = defaultdict(list)
        for window in found:
            by_row[window["example"]].append(window)
        return [best_answer(by_row[i], row["context"], n_best=self.n_best, with_negative=self.with_negative, threshold=self.null_score_diff_threshold)
                for i, row in enumerate(rows)]

    # ---------------------------------------------------------------- what final/ records
    def state(self) -> dict:
        return {"labels": [], "version_2_with_negative": self.with_negative}

    def load_state(self, state: dict) -> None:
        self.labels = []
        self.with_negative = bool(state.get("version_2_with_negative", self.with_negative))

    # ---------------------------------------------------------------- prompting baselines
    prompt_modes = ("zero_shot", "few_shot")

    def prompt_predict(self, model, tokenizer, rows, demos, settings) -> list[str]:
        """A causal LM's generated answer to each question (the first line of its reply; "no
        answer" is the empty prediction of SQuAD v2.0), scored as extracted spans are."""
        from llmtune.tasks import prompts

        template = settings.template or (PROMPT_V2 if self.with_negative else PROMPT)
        chat = prompts.uses_chat(tokenizer, settings)

        def query(row):
            return prompts.fill(template, "prompting.template", context=row["context"], question=row["question"])

        shown = [(query(d), (answer_lists(d["answers"])[0] or [NO_ANSWER])[0]) for d in demos]
        texts = [prompts.render(tokenizer, shown, query(row), chat) for row in rows]
        return [generated_answer(text) for text in prompts.generate(model, tokenizer, texts, settings, chat)]

    def prompt_metrics(self, rows, predictions) -> dict[str, float]:
        return squad_metrics(predictions, [answer_lists(row["answers"])[0] for row in rows], with_negative=self.with_negative)


# The prompting baseline's prompt (prompting.template replaces it; fields {context}, {question}).
PROMPT = "Answer the question with a short phrase copied from the context.\nContext: {context}\nQuestion: {question}\nAnswer:"
NO_ANSWER = "no answer"
PROMPT_V2 = PROMPT.replace("context.\n", f"context, or with \"{NO_ANSWER}\" if the context does not answer it.\n", 1)


def generated_answer(text: str) -> str:
    """A generated reply as a predicted span: its first line, without quotes or a final full
    stop; the no-answer phrase (or none/unanswerable) is the empty prediction."""
    first = re.sub(r"^[\s\"'`]+|[\s\"'`.]+$", "", (text.strip().splitlines() or [""])[0])
    return "" if first.lower() in (NO_ANSWER, "none", "unanswerable", "n/a") else first
