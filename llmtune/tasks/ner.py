"""Named-entity recognition: word -> subword label alignment, seqeval entity-level metrics."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmtune.errors import UserError
from llmtune.tasks import common, prompts
from llmtune.tasks.base import IGNORE_INDEX, EvalContext, PredictContext, Task

log = logging.getLogger("llmtune")


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


# ------------------------------------------------------------------ tag schemes
# The model learns IOB2 tags: B-TYPE starts an entity, I-TYPE continues it, O is outside one.
# Data in IOB1 (I- starts an entity; B- only splits two adjacent entities of one type) or in
# BIOES / IOBES / BILOU (E- or L- ends an entity, S- or U- is a one-word entity) is converted
# to IOB2, with a warning. An I- that continues no entity, in data that otherwise starts its
# entities with B-, is refused: no scheme explains it, so it is a slip in the data, and reading
# it as IOB1 (as conlleval does) would hide it.
_TAG = re.compile(r"([BIESLU])-(.+)")
_IOB2_PREFIX = {"B": "B", "I": "I", "E": "I", "L": "I", "S": "B", "U": "B"}
SCHEME_NOTES = {
    "IOB1": "an I- tag that starts an entity became B-",
    "BIOES": "S-/U- became B-, E-/L- became I-",
}


def _entity_type(tag: str) -> str:
    return "" if tag == "O" else tag[2:]


def _first_break(tags: list[str]) -> int | None:
    """Index of the first I- tag that continues no entity of its type (IOB2's one rule)."""
    previous = "O"
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and _entity_type(previous) != tag[2:]:
            return i
        previous = tag
    return None


def _b_starts_entities(tags: list[str]) -> bool:
    """Whether some B- tag follows a word outside an entity of its type (how IOB2 uses B-;
    IOB1 uses B- only right after a word of the same type)."""
    return any(tag.startswith("B-") and _entity_type(prev) != tag[2:] for prev, tag in zip(["O", *tags], tags, strict=False))


def to_iob2(tags: list[str], scheme: str) -> list[str]:
    """One sentence's tags, written in `scheme` ('IOB2', 'IOB1' or 'BIOES'), in IOB2."""
    if scheme == "BIOES":
        return [tag if tag == "O" else _IOB2_PREFIX[tag[0]] + tag[1:] for tag in tags]
    if scheme == "IOB1":
        return [
            "B" + tag[1:] if tag.startswith("I-") and _entity_type(prev) != tag[2:] else tag
            for prev, tag in zip(["O", *tags], tags, strict=False)
        ]
    return list(tags)


def _refuse_break(where: str, sentences: list[list[str]], shown: list[list[str]], numbers: Sequence[int], rule: str, starts: str) -> None:
    """Raise for the first sentence of `sentences` with an I- that continues nothing; `shown`
    are the tags as the file writes them, `starts` the prefixes an entity may start with."""
    broken = [(n, i) for n, tags in enumerate(sentences) if (i := _first_break(tags)) is not None]
    if not broken:
        return
    n, i = broken[0]
    tag = shown[n][i]
    before = "it starts the sentence" if i == 0 else f"the word before is tagged '{shown[n][i - 1]}'"
    raise UserError(
        f"{where} sentence {numbers[n]} word {i + 1}: tag '{tag}' continues no entity ({before}); {rule} "
        f"Start the entity with {' or '.join(f'{p}-{tag[2:]}' for p in starts)} or fix the tag before it (sentences with such a tag: {len(broken)})."
    )


def tag_scheme(sentences: list[list[str]], where: str, numbers: Sequence[int] | None = None) -> str:
    """The scheme `sentences` (lists of well-formed tags) are written in: 'IOB2', 'IOB1' or
    'BIOES'. Raises UserError, naming the sentence (its number in `numbers`: the source's,
    1, 2, ... by default), when the tags fit none of them."""
    numbers = numbers or range(1, len(sentences) + 1)
    if any(tag[0] in "ESLU" for tags in sentences for tag in tags if tag != "O"):
        converted = [to_iob2(tags, "BIOES") for tags in sentences]
        _refuse_break(where, converted, sentences, numbers, "in BIOES an entity is B- (I-...) E-, or a single S-.", "SB")
        return "BIOES"
    if all(_first_break(tags) is None for tags in sentences):
        return "IOB2"
    if not any(_b_starts_entities(tags) for tags in sentences):
        return "IOB1"
    _refuse_break(where, sentences, sentences, numbers, "other entities here start with B-, as IOB2 requires.", "B")
    return "IOB2"  # not reached: _refuse_break found the break _first_break did


def _check_tag(tag, where: str, n: int, i: int) -> None:
    if tag is None or tag == "":
        raise UserError(f"{where} sentence {n} word {i} has no tag ({'null' if tag is None else 'empty'}); tag every word, O outside entities.")
    if tag != "O" and not (isinstance(tag, str) and _TAG.fullmatch(tag)):
        ids = " Numbers are class ids: write the tag names instead." if str(tag).isdigit() else ""
        raise UserError(
            f"{where} sentence {n} word {i}: tag {tag!r} is not an IOB tag; task=ner needs O and PREFIX-TYPE tags "
            f"such as B-PER, I-PER (IOB2; IOB1 and BIOES/IOBES are converted).{ids}"
        )


def check_sentences(tokens: list, tags: list, where: str, numbers: Sequence[int] | None = None) -> list[list[str]]:
    """The tag lists of a split, after checking each sentence has one well-formed tag per word.
    Errors name a sentence by its number in `numbers` (the source's; 1, 2, ... by default)."""
    for n, words, labels in zip(numbers or range(1, len(tags) + 1), tokens, tags, strict=True):
        if not isinstance(words, list) or not isinstance(labels, list):
            raise UserError(
                f"{where} sentence {n}: 'tokens' must be a list of words and 'tags' a list with one tag per word; "
                f"got {type(words).__name__} and {type(labels).__name__}."
            )
        if len(words) != len(labels):
            raise UserError(f"{where} sentence {n} has {len(words)} tokens but {len(labels)} tags; give every token exactly one tag.")
        for i, tag in enumerate(labels, start=1):
            _check_tag(tag, where, n, i)
    return tags


# Words of a plain-text input for `predict`: runs of letters/digits (with inner ' - . kept,
# as in "O'Neil", "Jean-Luc", "U.S."), or single other non-space characters.
WORD = re.compile(r"\w+(?:['\-.]\w+)*|[^\w\s]")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) of each word of `text`, character offsets into it."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def entities(tags: list[str], spans: list[tuple[str, int, int]], text: str, scores: list[float]) -> list[dict]:
    """IOB2 tags over words -> entities with type, text, character offsets and mean score."""
    found, current = [], None
    for tag, (_, start, end), score in zip(tags, spans, scores, strict=True):
        kind = tag[2:] if tag != "O" else None
        if current is not None and (tag.startswith("I-") and kind == current["type"]):
            current["end"], current["scores"] = end, current["scores"] + [score]
            continue
        if current is not None:
            found.append(current)
            current = None
        if kind is not None:  # B-, or an I- that starts an entity (read as B-, as seqeval does)
            current = {"type": kind, "start": start, "end": end, "scores": [score]}
    if current is not None:
        found.append(current)
    return [{"type": e["type"], "text": text[e["start"]:e["end"]], "start": e["start"], "end": e["end"],
             "score": round(sum(e["scores"]) / len(e["scores"]), 6)} for e in found]


@dataclass
class NERTask(Task):
    name: str = "ner"
    max_length: int = 128
    label_all_tokens: bool = False
    builtin: str = "ner"

    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    main_metric = "f1"
    greater_is_better = True
    required_columns = ("tokens", "tags")
    split_into_words = True

    def __post_init__(self) -> None:
        self.labels: list[str] = []
        self.schemes: dict[str, str] = {}  # split -> tag scheme of its data (converted to IOB2 in preprocess)

    def texts(self, rows):
        for tokens in rows["tokens"]:
            yield " ".join(tokens)

    def setup(self, raw) -> None:
        """Label maps, after checking every split's tags (one per word, a known scheme)."""
        converted = self._read_tags(raw)
        self.labels = common.label_list(tag for tags in converted["train"] for tag in tags)
        if self.labels == ["O"]:
            log.warning("%s: every word is tagged O, so there is no entity to learn; check the tags column", common.describe(raw, "train"))
        common.check_known_labels(raw, "tags", self.labels, nested=True, values=converted, unit="sentence")

    def check_eval(self, raw) -> None:
        """The same checks against the trained tags; records each split's scheme for preprocess."""
        common.check_known_labels(raw, "tags", self.labels, nested=True, values=self._read_tags(raw), unit="sentence")

    def _read_tags(self, raw) -> dict[str, list[list[str]]]:
        """Each split's tags, checked and converted to IOB2; its scheme goes to self.schemes."""
        converted = {}
        for split, ds in raw.items():
            where = common.describe(raw, split)
            numbers = common.source_rows(ds)
            sentences = check_sentences(ds["tokens"], list(ds["tags"]), where, numbers)
            self.schemes[split] = scheme = tag_scheme(sentences, where, numbers)
            if scheme != "IOB2":
                log.warning("%s: the tags are %s; converted to IOB2, the scheme the model learns (%s)", where, scheme, SCHEME_NOTES[scheme])
            converted[split] = [to_iob2(tags, scheme) for tags in sentences]
        return converted

    def model_kwargs(self) -> dict:
        return common.label_maps(self.labels)

    def full_lengths(self, rows, tokenizer) -> list[int]:
        return [len(ids) for ids in tokenizer(list(rows["tokens"]), is_split_into_words=True)["input_ids"]]

    def _b_to_i(self) -> dict[int, int]:
        index = {label: i for i, label in enumerate(self.labels)}
        return {i: index[f"I-{label[2:]}"] for label, i in index.items() if label.startswith("B-") and f"I-{label[2:]}" in index}

    def preprocess(self, raw, tokenizer, num_proc=None):
        from datasets import DatasetDict

        if not tokenizer.is_fast:
            raise UserError(f"task=ner needs a fast tokenizer (word_ids); {type(tokenizer).__name__} is not. Use a model with a tokenizer.json.")
        label2id = {label: i for i, label in enumerate(self.labels)}
        b_to_i = self._b_to_i()

        def encode(batch, scheme: str):
            out = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=self.max_length)
            out["labels"], out["word_labels"] = [], []
            for i, tags in enumerate(batch["tags"]):
                ids = [label2id[str(t)] for t in to_iob2(tags, scheme)]
                word_ids = out.word_ids(i)
                out["labels"].append(align_labels(word_ids, ids, label_all_tokens=self.label_all_tokens, b_to_i=b_to_i))
                # Evaluation always reads the first subword of each word, whatever training did.
                out["word_labels"].append(align_labels(word_ids, ids, label_all_tokens=False, b_to_i=b_to_i))
            return out

        return DatasetDict({
            split: ds.map(encode, fn_kwargs={"scheme": self.schemes.get(split, "IOB2")}, batched=True, remove_columns=ds.column_names, num_proc=num_proc, desc="tokenizing")
            for split, ds in raw.items()
        })

    def collator(self, tokenizer, train: bool):
        keys = tuple(tokenizer.model_input_names)
        label_key = "labels" if train else "word_labels"

        def collate(features: list[dict]) -> dict:
            batch = common.pad_inputs(tokenizer, features, keys)
            batch["labels"] = common.pad_labels([f[label_key] for f in features], batch["input_ids"].shape[1])
            return batch

        return collate

    def evaluate(self, model, loader, ctx: EvalContext) -> dict[str, float]:
        accelerator = ctx.accelerator
        pred_tags, gold_tags = [], []

        def collect(logits, labels):
            preds = accelerator.pad_across_processes(logits.argmax(-1), dim=1, pad_index=IGNORE_INDEX)
            labels = accelerator.pad_across_processes(labels, dim=1, pad_index=IGNORE_INDEX)
            preds, labels = accelerator.gather_for_metrics((preds, labels))
            for p_row, g_row in zip(preds.cpu().tolist(), labels.cpu().tolist(), strict=True):
                keep = [(p, g) for p, g in zip(p_row, g_row, strict=True) if g != IGNORE_INDEX]
                pred_tags.append([self.labels[p] for p, _ in keep])
                gold_tags.append([self.labels[g] for _, g in keep])

        loss = common.run_eval(model, loader, accelerator, collect, forward=self.logits)
        return {**self._metrics(gold_tags, pred_tags), "loss": loss.loss}

    @staticmethod
    def _metrics(gold_tags: list[list[str]], pred_tags: list[list[str]]) -> dict[str, float]:
        """seqeval's entity-level scores of IOB2 tag sequences (training and prompting)."""
        from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

        f1 = float(f1_score(gold_tags, pred_tags, zero_division=0))
        return {
            "precision": float(precision_score(gold_tags, pred_tags, zero_division=0)),
            "recall": float(recall_score(gold_tags, pred_tags, zero_division=0)),
            "f1": f1,
            "f1_stderr": common.proportion_stderr(f1, len(gold_tags)),  # sentences as the unit
            "accuracy": float(accuracy_score(gold_tags, pred_tags)),
        }

    # ---------------------------------------------------------------- predict / serve
    def read_input(self, item, where: str) -> dict:
        """A text (split into words here), or {"text": ...}, or {"tokens": [...]} (words given;
        offsets then refer to the words joined with single spaces)."""
        if isinstance(item, dict) and isinstance(item.get("tokens"), list) and all(isinstance(t, str) and t for t in item["tokens"]):
            text, spans, start = " ".join(item["tokens"]), [], 0
            for token in item["tokens"]:
                spans.append((token, start, start + len(token)))
                start += len(token) + 1
            return {"text": text, "spans": spans}
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if isinstance(item, str):
            return {"text": item, "spans": split_words(item)}
        raise UserError(f"{where}: expected a text, or an object with 'text' or 'tokens' (a list of words); got {str(item)[:60]!r}.")

    def input_length(self, row: dict) -> int:
        return len(row["spans"])

    def predict(self, model, rows: list[dict], ctx: PredictContext) -> list[dict]:
        """Entities (type, text, start/end character offsets, score) from the tag of each word's
        first subword, as in evaluation; words past max_length tokens are tagged O."""
        words = [[w for w, _, _ in row["spans"]] or [""] for row in rows]
        enc = ctx.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**enc.to(ctx.device)).logits.float(), dim=-1).cpu()
        out = []
        for i, row in enumerate(rows):
            first: dict[int, int] = {}
            for position, word in enumerate(enc.word_ids(i)):
                if word is not None and word not in first:
                    first[word] = position
            tags, scores = [], []
            for w in range(len(row["spans"])):
                if w in first:
                    p = probs[i, first[w]]
                    tags.append(self.labels[int(p.argmax())])
                    scores.append(float(p.max()))
                else:
                    tags.append("O")
                    scores.append(1.0)
            out.append({"entities": entities(tags, row["spans"], row["text"], scores)})
        return out

    # ---------------------------------------------------------------- prompting baselines
    prompt_modes = ("zero_shot", "few_shot")

    def _type_words(self, settings) -> dict[str, str]:
        """Entity type -> the word the prompt uses for it (the type's name unless
        prompting.verbalizer names another, e.g. {PER: person})."""
        types = sorted({label[2:] for label in self.labels if label != "O"})
        unknown = [str(k) for k in settings.verbalizer if str(k) not in types]
        if unknown:
            raise UserError(f"prompting.verbalizer: {unknown[0]!r} is not an entity type of this data (types: {', '.join(types)}); map types to words, e.g. {{{types[0] if types else 'PER'}: person}}.")
        return {t: str(settings.verbalizer.get(t, t)) for t in types}

    def prompt_predict(self, model, tokenizer, rows, demos, settings) -> list[list[str]]:
        """IOB2 tags per sentence, from generated "entity | type" lines matched back to its words."""
        words = self._type_words(settings)
        template = settings.template or PROMPT_TEMPLATE
        chat = prompts.uses_chat(tokenizer, settings)

        def query(row):
            return prompts.fill(template, "prompting.template", text=" ".join(row["tokens"]), types=", ".join(words.values()))

        shown = [(query(d), entity_lines(d["tokens"], to_iob2(d["tags"], tag_scheme([d["tags"]], "a demonstration")), words)) for d in demos]
        texts = [prompts.render(tokenizer, shown, query(row), chat, sep="\n") for row in rows]
        generated = prompts.generate(model, tokenizer, texts, settings, chat)
        by_word = {w.lower(): t for t, w in words.items()} | {t.lower(): t for t in words}
        return [entity_tags(row["tokens"], parse_entity_lines(text, by_word)) for row, text in zip(rows, generated, strict=True)]

    def prompt_metrics(self, rows, predictions) -> dict[str, float]:
        gold = [list(row["tags"]) for row in rows]
        scheme = tag_scheme(gold, "the scored split")
        return self._metrics([to_iob2(tags, scheme) for tags in gold], predictions)


# The prompt of the prompting baseline (prompting.template replaces it; fields {text}, {types}).
PROMPT_TEMPLATE = ("List the named entities in the text, one per line as: entity | type. Types: {types}. "
                   "Write none if there are none.\nText: {text}\nEntities:")
# "entity | type", optionally after a bullet or a number ("- ", "2. ").
ENTITY_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*(?P<entity>[^|]+?)\s*\|\s*(?P<type>[^|]+?)\s*\.?\s*$")


def entity_lines(tokens: list[str], tags: list[str], words: dict[str, str]) -> str:
    """A sentence's entities as the prompt asks for them (demonstrations): "entity | type" lines, or none."""
    from seqeval.metrics.sequence_labeling import get_entities

    lines = [f"{' '.join(tokens[start:end + 1])} | {words.get(kind, kind)}" for kind, start, end in get_entities(tags)]
    return "\n".join(lines) or "none"


def parse_entity_lines(text: str, types: dict[str, str]) -> list[tuple[str, str]]:
    """(entity text, type) of each line of a model's answer that reads "entity | type" with a
    known type (`types`: lower-cased word -> type); other lines (chatter, unknown types) are
    skipped. The answer ends at its first blank line (a plain prompt's next example)."""
    found = []
    for line in text.strip().split("\n\n")[0].splitlines():
        match = ENTITY_LINE.match(line)
        if match is None:
            continue
        kind = types.get(match["type"].strip("'\"` ").lower())
        entity = match["entity"].strip("'\"` ")
        if kind is not None and entity:
            found.append((entity, kind))
    return found


def entity_tags(tokens: list[str], found: list[tuple[str, str]]) -> list[str]:
    """IOB2 tags of `tokens` for entities named by their text: each goes on the first untagged
    run of words that spells it (exactly, else ignoring case); an entity found nowhere is dropped."""
    tags = ["O"] * len(tokens)
    for entity, kind in found:
        for words in (entity.split(), [w for w, _, _ in split_words(entity)]):
            start = _first_run(tokens, words, tags)
            if start is not None:
                tags[start:start + len(words)] = [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
                break
    return tags


def _first_run(tokens: list[str], words: list[str], tags: list[str]) -> int | None:
    n = len(words)
    if n == 0:
        return None
    for fold in (str, str.lower):
        wanted = [fold(w) for w in words]
        for i in range(len(tokens) - n + 1):
            if all(t == "O" for t in tags[i:i + n]) and [fold(t) for t in tokens[i:i + n]] == wanted:
                return i
    return None
