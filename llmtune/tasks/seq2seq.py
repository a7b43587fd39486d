"""Sequence-to-sequence tasks: summarization and translation (source text -> target text).

Two ways to train one, chosen by `task.architecture` (auto: from the model's config):
- encoder-decoder (AutoModelForSeq2SeqLM: T5, BART, Marian, or model=minilm2minilm, transformers'
  EncoderDecoderModel warm-started from two encoder checkpoints): the source is the encoder's
  input (after `task.source_prefix`, e.g. T5's "summarize: "), the target the decoder's labels;
  the model shifts them right into its decoder inputs (prepare_decoder_input_ids_from_labels).
- decoder-only (AutoModelForCausalLM: tiny_llama, small_clm, gpt2, smollm2): the source goes into
  a prompt (`task.prompt`, formatted as task=sft formats a user turn: the tokenizer's chat
  template, else sft.PLAIN_TEMPLATE), the target follows, and the loss covers the target and its
  EOS only (sft.shifted_labels). Sources are cut to fit, never targets. `task.packing` packs the
  training split as task=sft does; evaluation splits stay one sample per row, so each
  evaluation batch yields its prompts for generation.

Rows are {"source", "target"} (other names through data.columns) or, as in wmt16, a
`translation` column of {lang: text} objects read with task.source_lang / task.target_lang.

Evaluation is one pass over the loader: the held-out loss of each batch, then the batch's
generated targets (greedy, or beam search with task.generation.num_beams; KV cache on). The
scores come from llmtune.tasks.seq2seq_metrics (rouge-score, sacrebleu). Every example's source,
reference and prediction go to the engine (EvalContext.report_predictions): predictions/<split>.jsonl.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmtune.errors import UserError
from llmtune.tasks import common, seq2seq_metrics
from llmtune.tasks.base import IGNORE_INDEX, EvalContext, PredictContext, Task, model_inputs
from llmtune.tasks.sft import prompt_text, shifted_labels

log = logging.getLogger("llmtune")

ARCHITECTURES = ("auto", "encoder_decoder", "decoder")
# Generation settings (task.generation, and `llmtune predict`/`serve` params): sample values give the types.
GENERATION_DEFAULTS = {"max_new_tokens": 64, "num_beams": 1, "length_penalty": 1.0, "no_repeat_ngram_size": 0}
# Where the source goes in the rendered prompt (split there, so the source can be cut to fit).
_SOURCE_MARK = "@@SOURCE@@"


def _end_id(tokenizer) -> int | None:
    """The token that ends a target: EOS, or SEP for BERT-style tokenizers (which have no EOS)."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def _cut(ids: list[int], length: int, specials: set[int]) -> list[int]:
    """`ids` cut to `length` tokens, keeping a closing special token (as truncation does)."""
    if len(ids) <= length:
        return ids
    return ids[: length - 1] + ids[-1:] if ids and ids[-1] in specials else ids[:length]


def _padded(rows: list[list[int]], pad: int, left: bool) -> dict:
    """Rows padded into one batch: prompts on the left (every row's new tokens start at the same
    position), encoder inputs on the right (as in training: positions start at the first token)."""
    width = max(len(row) for row in rows)

    def fill(row: list[int], value: int, real: list[int]) -> list[int]:
        return [value] * (width - len(row)) + real if left else real + [value] * (width - len(row))

    return {
        "input_ids": torch.tensor([fill(row, pad, row) for row in rows], dtype=torch.long),
        "attention_mask": torch.tensor([fill(row, 0, [1] * len(row)) for row in rows], dtype=torch.long),
    }


@dataclass
class Seq2SeqTask(Task):
    name: str = "seq2seq"
    max_length: int = 256             # source tokens (encoder-decoder); prompt + source + target (decoder-only)
    max_target_length: int = 64       # target tokens, its end token included
    architecture: str = "auto"        # auto | encoder_decoder | decoder
    # Read from the model group (conf/task/*.yaml interpolates them) to resolve architecture=auto.
    model_name_or_path: str | None = None
    model_type: str | None = None
    decoder_name_or_path: str | None = None
    source_prefix: str = ""           # encoder-decoder: put before every source (T5: "summarize: ")
    prompt: str | None = None         # decoder-only: the instruction, with {source}; null: the task's default
    packing: bool = False             # decoder-only: pack training samples into rows of max_length
    attn_implementation: str | None = None
    source_lang: str | None = None    # the keys to read from a `translation` column of {lang: text}
    target_lang: str | None = None
    generation: dict = field(default_factory=dict)
    builtin: str | None = None

    greater_is_better = True
    predict_params = GENERATION_DEFAULTS
    default_prompt = "{source}"

    def __post_init__(self) -> None:
        from omegaconf import OmegaConf

        if self.architecture not in ARCHITECTURES:
            raise UserError(f"task.architecture={self.architecture}: expected one of {', '.join(ARCHITECTURES)}.")
        given = OmegaConf.to_container(self.generation) if OmegaConf.is_config(self.generation) else dict(self.generation or {})
        unknown = sorted(set(given) - set(GENERATION_DEFAULTS))
        if unknown:
            raise UserError(f"task.generation.{unknown[0]}: not a generation setting; the settings are {', '.join(GENERATION_DEFAULTS)}.")
        self.generation = {**GENERATION_DEFAULTS, **given}
        self._check_generation(self.generation, "task.generation.")
        if self.max_target_length < 2:
            raise UserError(f"task.max_target_length={self.max_target_length}: must be at least 2 (a target token and its end token).")
        template = self.prompt if self.prompt is not None else self.default_prompt
        try:
            filled = template.format(source=_SOURCE_MARK, source_lang=self.source_lang or "", target_lang=self.target_lang or "")
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(f"task.prompt={template!r}: cannot be filled in ({exc!r}); it may use {{source}}, {{source_lang}} and {{target_lang}}.") from None
        if filled.count(_SOURCE_MARK) != 1:
            raise UserError(f"task.prompt={template!r}: must contain {{source}} exactly once (where the source text goes).")
        self._encoder_decoder: bool | None = None

    # ---------------------------------------------------------------- which model
    @property
    def encoder_decoder(self) -> bool:
        if self._encoder_decoder is None:
            self._encoder_decoder = self._detect_encoder_decoder()
        return self._encoder_decoder

    def _detect_encoder_decoder(self) -> bool:
        if self.architecture != "auto":
            return self.architecture == "encoder_decoder"
        if self.decoder_name_or_path:
            return True  # two checkpoints composed into an EncoderDecoderModel
        import transformers

        from llmtune.models import resolve

        try:
            if self.model_type:
                config = transformers.AutoConfig.for_model(self.model_type)
            elif self.model_name_or_path:
                config = transformers.AutoConfig.from_pretrained(resolve(str(self.model_name_or_path)))
            else:
                return False
        except (OSError, ValueError, KeyError):
            return False  # the model cannot be read here; loading it reports why
        return bool(getattr(config, "is_encoder_decoder", False))

    @property
    def auto_class(self) -> str:  # type: ignore[override]
        return "AutoModelForSeq2SeqLM" if self.encoder_decoder else "AutoModelForCausalLM"

    @property
    def peft_task_type(self) -> str:  # type: ignore[override]
        return "SEQ_2_SEQ_LM" if self.encoder_decoder else "CAUSAL_LM"

    @property
    def packs_samples(self) -> bool:  # type: ignore[override]
        return self.packing and not self.encoder_decoder

    # ---------------------------------------------------------------- rows
    def _pairs(self, rows) -> tuple[list, list]:
        """(sources, targets) of a raw split, from source/target or a `translation` column."""
        columns = set(rows.column_names)
        if {"source", "target"} <= columns:
            return list(rows["source"]), list(rows["target"])
        where = rows.info.description or "the data"
        if "translation" in columns:
            return self._from_translation(rows["translation"], where)
        raise UserError(
            f"{where}: task={self.name} needs 'source' and 'target' columns (or a 'translation' column of {{lang: text}} objects); "
            f"found: {', '.join(sorted(columns)) or 'none'}. Rename columns with data.columns={{SOURCE_COLUMN: source, TARGET_COLUMN: target}}."
        )

    def _from_translation(self, pairs: list, where: str) -> tuple[list, list]:
        languages = sorted({lang for pair in pairs[:100] if isinstance(pair, dict) for lang, text in pair.items() if text is not None})
        if not self.source_lang or not self.target_lang or not {self.source_lang, self.target_lang} <= set(languages):
            raise UserError(
                f"{where}: its 'translation' column holds {{lang: text}} objects in {', '.join(languages) or 'no language'}; "
                f"set task.source_lang and task.target_lang to two of them (now {self.source_lang} and {self.target_lang})."
            )
        return ([pair.get(self.source_lang) if isinstance(pair, dict) else None for pair in pairs],
                [pair.get(self.target_lang) if isinstance(pair, dict) else None for pair in pairs])

    def _check_rows(self, raw) -> None:
        for split, rows in raw.items():
            where = common.describe(raw, split)
            for number, source, target in zip(common.source_rows(rows), *self._pairs(rows), strict=True):
                for column, text in (("source", source), ("target", target)):
                    if not isinstance(text, str) or not text.strip():
                        raise UserError(f"{where} row {number}: the {column} must be non-empty text; got {text!r:.60}. Fix or remove the row.")

    def texts(self, rows):
        """Sources and targets (trains a tokenizer for a model built from scratch)."""
        sources, targets = self._pairs(rows)
        yield from sources
        yield from targets

    def setup(self, raw) -> None:
        """Checks every row of every split (no label maps), and that packing fits the model."""
        if self.packing and self.encoder_decoder:
            raise UserError(
                "task.packing=true: packing puts several samples in one row of a decoder-only model; this model is an "
                "encoder-decoder (one source per encoder row). Set task.packing=false."
            )
        self._check_rows(raw)

    def check_eval(self, raw) -> None:
        self._check_rows(raw)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "architecture": "encoder_decoder" if self.encoder_decoder else "decoder",
                "max_target_length": self.max_target_length, "packing": self.packing}

    # ---------------------------------------------------------------- tokenizing
    def _prompt_parts(self, tokenizer) -> tuple[list[int], list[int]]:
        """Token ids of the prompt before and after the source (decoder-only)."""
        template = self.prompt if self.prompt is not None else self.default_prompt
        content = template.format(source=_SOURCE_MARK, source_lang=self.source_lang or "", target_lang=self.target_lang or "")
        before, after = prompt_text([{"role": "user", "content": content}], tokenizer).split(_SOURCE_MARK)
        encoded = tokenizer([before, after], add_special_tokens=False)["input_ids"]
        return encoded[0], encoded[1]

    def _encoder_sources(self, sources: list[str], tokenizer) -> list[list[int]]:
        """Encoder inputs, untruncated (with the tokenizer's special tokens)."""
        return tokenizer([self.source_prefix + s for s in sources])["input_ids"]

    def _targets(self, targets: list[str], tokenizer) -> list[list[int]]:
        """Target ids, each ending with the end token (added where the tokenizer does not)."""
        end = _end_id(tokenizer)
        ids = tokenizer(text_target=targets)["input_ids"] if self.encoder_decoder else tokenizer(targets, add_special_tokens=False)["input_ids"]
        specials = set(tokenizer.all_special_ids)
        return [_cut(row if row and row[-1] == end else row + [end], self.max_target_length, specials) for row in ids]

    def _samples(self, sources: list[str], targets: list[str], tokenizer) -> tuple[list[dict | None], int]:
        """One example per row ({input_ids, labels}; None: no room for it) and how many sources were cut."""
        target_ids = self._targets(targets, tokenizer)
        if self.encoder_decoder:
            specials = set(tokenizer.all_special_ids)
            encoded = self._encoder_sources(sources, tokenizer)
            cut = sum(len(ids) > self.max_length for ids in encoded)
            return [{"input_ids": _cut(ids, self.max_length, specials), "labels": labels} for ids, labels in zip(encoded, target_ids, strict=True)], cut
        before, after = self._prompt_parts(tokenizer)
        out, cut = [], 0
        for source, target in zip(tokenizer(sources, add_special_tokens=False)["input_ids"], target_ids, strict=True):
            room = self.max_length - len(before) - len(after) - len(target)
            if room < 1:
                out.append(None)
                continue
            cut += len(source) > room
            ids = before + source[:room] + after + target
            out.append({"input_ids": ids, "labels": shifted_labels(ids, [False] * (len(ids) - len(target)) + [True] * len(target))})
        return out, cut

    def full_lengths(self, rows, tokenizer) -> list[int]:
        sources, targets = self._pairs(rows)
        if self.encoder_decoder:
            return [len(ids) for ids in self._encoder_sources(sources, tokenizer)]
        before, after = self._prompt_parts(tokenizer)
        target_ids = self._targets(targets, tokenizer)
        return [len(before) + len(s) + len(after) + len(t) for s, t in zip(tokenizer(sources, add_special_tokens=False)["input_ids"], target_ids, strict=True)]

    def preprocess(self, raw, tokenizer, num_proc=None):  # one tokenizer call per split: num_proc unused
        from datasets import Dataset, DatasetDict

        if _end_id(tokenizer) is None:
            raise UserError(f"task={self.name} needs a tokenizer with an end-of-sequence (or [SEP]) token to end each target; this one has neither.")
        out = {}
        for split, rows in raw.items():
            sources, targets = self._pairs(rows)
            samples, cut = self._samples(sources, targets, tokenizer)
            kept = [(i, s) for i, s in enumerate(samples) if s is not None]
            if cut:
                log.warning("%s: %d of %d sources are longer than task.max_length=%d allows and were cut", split, cut, len(rows), self.max_length)
            if len(kept) < len(samples):
                log.warning("%s: dropped %d samples whose prompt and target leave no room for the source within task.max_length=%d (raise it)",
                            split, len(samples) - len(kept), self.max_length)
            if split == "train" and self.packs_samples:
                packed = common.pack_samples([(s["input_ids"], s["labels"]) for _, s in kept], self.max_length, split)
                out[split] = Dataset.from_dict(packed)
                continue
            out[split] = Dataset.from_dict({
                "input_ids": [s["input_ids"] for _, s in kept], "labels": [s["labels"] for _, s in kept],
                "example": [i for i, _ in kept],  # the raw row: evaluation reports its source and reference
            })
        return DatasetDict(out)

    # ---------------------------------------------------------------- batches
    def collator(self, tokenizer, train: bool):
        pad = tokenizer.pad_token_id

        def collate_packed(features: list[dict]) -> dict:
            return common.pad_packed(features, pad)

        def collate(features: list[dict]) -> dict:
            batch = common.pad_inputs(tokenizer, features, ("input_ids",))
            batch["labels"] = common.pad_labels([f["labels"] for f in features], max(len(f["labels"]) for f in features))
            if "example" in features[0]:
                batch["example"] = [f["example"] for f in features]
            return batch

        return collate_packed if train and self.packs_samples else collate

    def logits(self, model, batch: dict, labels):
        """Encoder-decoder: the decoder reads the labels shifted right (the model's own rule,
        prepare_decoder_input_ids_from_labels). Decoder-only: as task=sft (packed rows too)."""
        if not self.encoder_decoder:
            return common.packed_forward(model, batch, labels, flatten=str(self.attn_implementation or "").startswith("flash"))
        inner = getattr(model, "module", model)  # DDP wraps the model; its methods live on .module
        inputs = {**model_inputs(batch), "decoder_input_ids": inner.prepare_decoder_input_ids_from_labels(labels=labels)}
        return model(**inputs, use_cache=False).logits, labels

    # ---------------------------------------------------------------- generation
    @staticmethod
    def _check_generation(settings: dict, prefix: str = "") -> None:
        for key, least in (("max_new_tokens", 1), ("num_beams", 1), ("no_repeat_ngram_size", 0)):
            value = settings[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserError(f"{prefix}{key}={value}: must be a whole number, {least} or more.")
        if isinstance(settings["length_penalty"], bool) or not isinstance(settings["length_penalty"], (int, float)):
            raise UserError(f"{prefix}length_penalty={settings['length_penalty']}: must be a number (1.0: neutral; above 1 favours longer beams).")

    @torch.no_grad()
    def _generate(self, model, inputs: dict, tokenizer, params: dict) -> list[str]:
        """Generated targets for a batch of encoder inputs or left-padded prompts (greedy, or
        beam search when num_beams > 1), special tokens removed."""
        settings = {**self.generation, **{k: v for k, v in params.items() if k in GENERATION_DEFAULTS}}
        self._check_generation(settings)
        beams = settings["num_beams"]
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings["max_new_tokens"], "num_beams": beams, "do_sample": False,
            "length_penalty": float(settings["length_penalty"]), "no_repeat_ngram_size": settings["no_repeat_ngram_size"],
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": _end_id(tokenizer), "use_cache": True,
            # unset the sampling knobs a checkpoint's generation_config may carry
            "temperature": None, "top_p": None, "top_k": None,
        }
        if beams > 1:
            kwargs["early_stopping"] = True  # a beam ends at its end token
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in inputs.items()}
        output = model.generate(**batch, **kwargs)
        if not self.encoder_decoder:  # the prompt comes back first
            output = output[:, batch["input_ids"].shape[1]:]
        return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]

    def _batch_prompts(self, batch: dict, labels, pad: int) -> dict:
        """The generation inputs of an evaluation batch: the encoder inputs, or each row's
        prompt (everything before its first labelled token) left-padded."""
        if self.encoder_decoder:
            return {k: batch[k] for k in ("input_ids", "attention_mask")}
        rows = []
        for ids, row_labels in zip(batch["input_ids"].tolist(), labels.tolist(), strict=True):
            first = next(t for t, label in enumerate(row_labels) if label != IGNORE_INDEX)
            rows.append(ids[: first + 1])  # labels are shifted: position `first` predicts the first target token
        return _padded(rows, pad, left=True)

    def _source_prompts(self, sources: list[str], tokenizer) -> dict:
        """Generation inputs for new sources (`llmtune predict`), cut as in training."""
        if self.encoder_decoder:
            specials = set(tokenizer.all_special_ids)
            return _padded([_cut(ids, self.max_length, specials) for ids in self._encoder_sources(sources, tokenizer)], tokenizer.pad_token_id, left=False)
        before, after = self._prompt_parts(tokenizer)
        room = max(1, self.max_length - len(before) - len(after) - self.max_target_length)
        return _padded([before + ids[:room] + after for ids in tokenizer(sources, add_special_tokens=False)["input_ids"]], tokenizer.pad_token_id, left=True)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model, loader, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__}.evaluate: score with _evaluate_generated")

    def _evaluate_generated(self, model, loader, ctx: EvalContext, score: Callable[[list[str], list[str]], dict]) -> dict[str, float]:
        """Held-out loss and generated targets in one pass; `score(predictions, references)` over them."""
        acc, tokenizer = ctx.accelerator, ctx.tokenizer
        generator = acc.unwrap_model(model)  # generate() lives on the model, not on a DDP wrapper
        sums, counts, generated = [], [], []
        model.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    labels = batch.pop("labels")
                    logits, scored = self.logits(model, batch, labels)
                    example_sums, targets = acc.gather_for_metrics(common.per_example_loss(logits, scored, labels))
                    sums.append(example_sums)
                    counts.append(targets)
                    texts = self._generate(generator, self._batch_prompts(batch, labels, tokenizer.pad_token_id), tokenizer, {})
                    generated += ctx.gather_objects(list(zip(batch["example"], texts, strict=True)))
        finally:
            model.train()
        loss = common.loss_stats(torch.cat(sums), torch.cat(counts)) if sums else common.EvalLoss(0.0, 0.0, 0)
        predicted = dict(generated)
        order = sorted(predicted)
        sources, references = self._pairs(ctx.raw)
        metrics = score([predicted[i] for i in order], [references[i] for i in order])
        ctx.report_predictions([{"source": sources[i], "reference": references[i], "prediction": predicted[i]} for i in order])
        return {**metrics, "loss": loss.loss, "loss_stderr": loss.stderr}

    # ---------------------------------------------------------------- predict / serve
    def read_input(self, item, where: str) -> dict:
        """A source text, or {"source": ...} ({"text": ...} also works)."""
        if isinstance(item, str):
            return {"source": item}
        if isinstance(item, dict):
            for key in ("source", "text"):
                if isinstance(item.get(key), str):
                    return {"source": item[key]}
        raise UserError(f"{where}: expected a source text, or an object with a 'source' field; got {str(item)[:60]!r}.")

    def input_length(self, row: dict) -> int:
        return len(row["source"])

    def predict(self, model, rows: list[dict], ctx: PredictContext) -> list[dict]:
        """The generated target of each source (the task's generation settings, or the params')."""
        inputs = self._source_prompts([row["source"] for row in rows], ctx.tokenizer)
        return [{"generated": text} for text in self._generate(model, inputs, ctx.tokenizer, ctx.params)]

    # ---------------------------------------------------------------- what final/ records
    def state(self) -> dict:
        return {**super().state(), "architecture": "encoder_decoder" if self.encoder_decoder else "decoder"}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        if state.get("architecture") in ARCHITECTURES[1:]:
            self._encoder_decoder = state["architecture"] == "encoder_decoder"


    # ---------------------------------------------------------------- prompting baselines
    prompt_modes = ("zero_shot", "few_shot")

    def _raw_pairs(self, rows: list[dict]) -> tuple[list, list]:
        from datasets import Dataset

        return self._pairs(Dataset.from_list(rows)) if rows else ([], [])

    def prompt_predict(self, model, tokenizer, rows, demos, settings) -> list[str]:
        """A causal LM's generated target for each source, with the task's prompt (task.prompt,
        or prompting.template; fields {source}, {source_lang}, {target_lang})."""
        from llmtune.tasks import prompts

        template = settings.template or (self.prompt if self.prompt is not None else self.default_prompt)
        chat = prompts.uses_chat(tokenizer, settings)

        def query(source: str) -> str:
            return prompts.fill(template, "prompting.template", source=source, source_lang=self.source_lang or "", target_lang=self.target_lang or "")

        shown = [(query(s), t) for s, t in zip(*self._raw_pairs(demos), strict=True)]
        sources, _ = self._raw_pairs(rows)
        texts = [prompts.render(tokenizer, shown, query(s), chat, sep="\n") for s in sources]
        generated = prompts.generate(model, tokenizer, texts, settings, chat)
        # A plain prompt's reply ends where the model starts the next example (a blank line).
        return [text if chat else text.split("\n\n")[0].strip() for text in generated]

    # The task's scores of generated texts against references (each subclass names its own;
    # not annotated: a dataclass field would shadow the subclasses' class attributes).
    _prompt_score = None

    def prompt_metrics(self, rows, predictions) -> dict[str, float]:
        if self._prompt_score is None:
            raise NotImplementedError(f"{type(self).__name__}._prompt_score")
        return self._prompt_score(predictions, self._raw_pairs(rows)[1])


@dataclass
class SummarizationTask(Seq2SeqTask):
    """ROUGE-L is the main metric: it rewards the longest in-order overlap with the reference,
    and unlike ROUGE-Lsum it does not depend on how texts are split into sentences (which
    llmtune does with a simple rule, nltk's splitter needing a download). On one-sentence
    summaries the two are equal; ROUGE-Lsum is reported too, as CNN/DailyMail papers use it."""

    name: str = "summarization"
    builtin: str | None = "summarization"
    main_metric = "rougeL"
    _prompt_score = staticmethod(seq2seq_metrics.rouge)   # prompting baselines (prompt_metrics)
    default_prompt = "Summarize the text in one sentence.\n\n{source}"

    def evaluate(self, model, loader, ctx: EvalContext) -> dict[str, float]:
        """ROUGE of the generated summaries, and the held-out loss."""
        return self._evaluate_generated(model, loader, ctx, seq2seq_metrics.rouge)


@dataclass
class TranslationTask(Seq2SeqTask):
    """Corpus BLEU (sacrebleu) is the main metric; chrF is reported too."""

    name: str = "translation"
    builtin: str | None = "translation"
    main_metric = "bleu"
    _prompt_score = staticmethod(seq2seq_metrics.bleu_chrf)   # prompting baselines (prompt_metrics)
    default_prompt = "Translate the text.\n\n{source}"

    def __post_init__(self) -> None:
        if self.prompt is None and self.source_lang and self.target_lang:
            self.prompt = "Translate from {source_lang} to {target_lang}.\n\n{source}"
        super().__post_init__()

    def evaluate(self, model, loader, ctx: EvalContext) -> dict[str, float]:
        """BLEU and chrF of the generated translations, and the held-out loss."""
        return self._evaluate_generated(model, loader, ctx, seq2seq_metrics.bleu_chrf)
