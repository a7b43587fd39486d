"""The Task contract: the seam between the generic engine (and the verbs) and one task.

A task is a class deriving from `Task`, configured from `conf/task/<name>.yaml` (`_target_`).
`Task` declares EVERY member the engine, the data loader and the verbs (evaluate, predict,
export, serve) may use, each with its default here; nothing outside llmtune/tasks/ probes a task
with getattr or names one. When the engine needs something new from tasks, it becomes a member
here with a default, never a special case elsewhere. Adding a task is one module in
llmtune/tasks/ plus one YAML.

Order of calls in a training run: `setup(raw)` (checks the data, builds label maps) ->
`model_kwargs()` -> `texts(...)` (tokenizer training, unknown-token check) -> `special_tokens()`
(added to the tokenizer) -> `model_class()` (builds the model) -> `preprocess` ->
`collator` -> per batch `logits` and `loss` -> `evaluate` -> `state()` into final/llmtune.json.
A trained run is loaded for the verbs with `load_state(state)` instead of `setup`; `llmtune
evaluate` then calls `check_eval(raw)` on the split it scores, and `preprocess` onward as above.
`preprocess` gets only the splits to tokenize: evaluation passes one split and no "train".

Predictions: `evaluate` may hand the engine one record per example (generated text next to its
source and reference) through `EvalContext.report_predictions`; the engine writes them to
predictions/<split>.jsonl in the run directory and logs a few (llmtune.engine.predictions).

Batches: `collator` returns a dict of tensors that the model's forward accepts, plus `labels`
aligned with what `logits` returns (-100 where nothing is predicted). Causal-LM labels come
already shifted by one. Values that are not tensors (example ids, offset maps) are metadata: the
engine keeps them out of `model(**batch)` (`model_inputs`). The loss is `loss(logits, labels)`
summed over labelled positions; the engine divides by the labelled positions of the whole
optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100


def model_inputs(batch: dict) -> dict:
    """The tensors of a batch; metadata (anything else) never reaches the model."""
    import torch

    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


@dataclass
class EvalContext:
    """What `Task.evaluate` gets besides the model and the loader."""

    accelerator: Any                        # gather_for_metrics, pad_across_processes, device
    tokenizer: Any = None
    raw: Any = None                         # the raw split being evaluated (datasets.Dataset)
    order: list[int] | None = None          # raw index of each example, in the order the loader yields them (one process)
    generation: dict = field(default_factory=dict)  # max_new_tokens, temperature, top_p, ...

    def generate(self, model, batch: dict, **overrides) -> list[str]:
        """Greedy (or sampled, with temperature) continuations of a batch of left-padded prompts:
        the new text of each row, special tokens removed."""
        from llmtune.tasks.generation import generate_texts

        return generate_texts(model, self.tokenizer, model_inputs(batch), {**self.generation, **overrides})

    def gather_objects(self, items: list) -> list:
        """Python objects (strings, dicts) of every process, in example order, each example once
        (the repeats accelerate adds to even out the last batches are dropped, as
        gather_for_metrics does for tensors)."""
        return self.accelerator.gather_for_metrics(items, use_gather_object=True)

    # Per-example outputs a task hands over in one evaluation (report_predictions); the engine
    # takes them after `evaluate` returns (take_predictions).
    predictions: list[dict] | None = None
    shown: int = 3

    def report_predictions(self, rows: list[dict], show: int = 3) -> None:
        """Hand the engine one JSON-able record per example (e.g. source, reference, prediction;
        a task that generates for a few examples hands over those), every process's, in example
        order; every process passes the same rows. The engine writes them to
        predictions/<split>.jsonl of the run (`llmtune evaluate`: beside its output= file) and
        logs the first `show` of them. Once per `evaluate` call; a task that never calls it
        writes no predictions."""
        self.predictions, self.shown = list(rows), show

    def take_predictions(self) -> tuple[list[dict] | None, int]:
        """For the engine: what report_predictions handed over in this evaluation (None:
        nothing), and how many to log. Clears it: the context serves the next evaluation too."""
        rows, self.predictions = self.predictions, None
        return rows, self.shown


@dataclass
class PredictContext:
    """What `Task.predict` gets besides the model and the rows."""

    tokenizer: Any
    device: Any = "cpu"
    params: dict = field(default_factory=dict)   # the verb's options: top_k, max_new_tokens, temperature, top_p, ...


@dataclass
class PromptSettings:
    """How `Task.prompt_predict` prompts a model that was not trained on the task
    (`llmtune evaluate prompting=...`, llmtune/prompting.py; helpers in llmtune/tasks/prompts.py)."""

    mode: str = "zero_shot"                 # zero_shot | few_shot (a causal LM) | cloze (a masked LM)
    template: str | None = None             # the task's prompt with {text}-style fields; None: the task's default
    verbalizer: dict = field(default_factory=dict)  # label (or entity type) -> the word(s) the prompt uses for it
    chat: bool = True                       # render with the tokenizer's chat template when it has one
    batch_size: int = 8
    max_length: int = 1024                  # prompt tokens kept (cut from the left: the query stays whole)
    generation: dict = field(default_factory=dict)  # max_new_tokens, ... (tasks that generate)
    finetune_steps: int = 0                 # cloze: optimizer steps on the demonstrations before scoring
    lr: float = 1e-5                        # cloze fine-tuning's learning rate (AdamW)
    seed: int = 0                           # this run's seed (demonstrations drawn with it, fine-tuning order)
    device: Any = "cpu"


class Task:
    """Every member the engine and the verbs may use, with its default."""

    name: str = "task"
    auto_class: str = "AutoModel"          # transformers Auto class of the model, e.g. AutoModelForTokenClassification
    peft_task_type: str = "FEATURE_EXTRACTION"   # peft TaskType: SEQ_CLS, TOKEN_CLS, CAUSAL_LM, ...
    main_metric: str = "loss"              # what early stopping, load_best, sweeps and summaries optimise
    greater_is_better: bool = False
    is_pretraining: bool = False           # runs under `llmtune pretrain` (else `llmtune finetune`)
    builtin: str | None = None             # kind of built-in sample data (llmtune.data.builtin); None: none
    max_length: int = 128
    required_columns: tuple[str, ...] = () # columns every raw example must have
    labels: list[str] | tuple = ()         # class or tag names, when the task has them (set by setup)
    # Whether a batch row may hold several samples kept apart by position_ids that restart per
    # sample (SFT's task.packing); PEFT methods that add virtual tokens refuse such batches.
    packs_samples: bool = False
    # What `llmtune predict` / `serve` accept beyond the inputs, with a sample value of each
    # type (the verbs check names and types against it).
    predict_params: dict[str, Any] = {}
    # Whether `preprocess` and `predict` tokenize pre-split words (is_split_into_words). A
    # byte-level BPE tokenizer then gets add_prefix_space, so that each word is tokenized as
    # in running text (llmtune.tokenization.load_tokenizer).
    split_into_words: bool = False
    # The tokenizer ids of `special_tokens()`, recorded by llmtune.models.load_model once the
    # model's embeddings hold them: the rows a PEFT method that freezes the embeddings still
    # trains (LoRA: peft's trainable_token_indices).
    special_token_ids: tuple[int, ...] = ()

    # ---------------------------------------------------------------- data
    def setup(self, raw) -> None:
        """Check the raw DatasetDict (labels, tags, chats: one line naming file and row) and
        build what depends on it (label maps). Runs before a tokenizer or model loads."""

    def check_eval(self, raw) -> None:
        """`llmtune evaluate`: check the raw splits to score against the trained state (restored
        by `load_state`: labels unknown to the model are one line) and prepare what `preprocess`
        needs of them, as `setup` does in training, but never rebuild the labels from them."""

    def texts(self, rows) -> Iterable[str]:
        """Plain text of a raw split (tokenizer training, the unknown-token check)."""
        yield from rows["text"]

    def full_lengths(self, rows, tokenizer) -> list[int] | None:
        """Token count of each raw row as `preprocess` tokenizes it, before the cut at
        max_length (`llmtune inspect`'s truncation rate and length histogram). None: the task
        cuts no example short (it packs its texts into blocks of max_length tokens)."""
        return None

    def model_kwargs(self) -> dict:
        """Keyword arguments for from_pretrained/from_config: num_labels, id2label, label2id..."""
        return {}

    def model_class(self):
        """What builds the model: a class with `from_pretrained(name_or_folder, **kwargs)` and
        `from_config(config, **kwargs)`, as transformers' Auto classes have. Default: the
        transformers class named by `auto_class`; a task with its own head returns its own."""
        import transformers

        return getattr(transformers, self.auto_class)

    def special_tokens(self) -> list[str]:
        """Tokens the task writes into its inputs (e.g. entity markers), known after `setup` or
        `load_state`. The builders add them to the tokenizer as special tokens (never split)
        before the model loads; the model's embeddings grow to hold them (their rows start as
        the mean of the pieces their text splits into), and they are saved with the tokenizer."""
        return []

    def preprocess(self, raw, tokenizer, num_proc: int | None = None):
        """Raw DatasetDict -> tokenized DatasetDict (the columns the collator reads)."""
        raise NotImplementedError(f"{type(self).__name__}.preprocess")

    def collator(self, tokenizer, train: bool) -> Callable[[list[dict]], dict]:
        """Examples -> a batch; `train` selects e.g. dynamic masking vs fixed masks."""
        raise NotImplementedError(f"{type(self).__name__}.collator")

    # ---------------------------------------------------------------- training
    def logits(self, model, batch: dict, labels):
        """(logits, labels) of a batch; the default is the plain forward at every position.
        A task may score only some positions (MLM: masked ones) and return the labels to match."""
        return model(**model_inputs(batch)).logits, labels

    def loss(self, logits, labels):
        """Cross-entropy SUMMED over labelled positions (the engine normalises per step)."""
        from llmtune.engine import loss

        return loss.cross_entropy_sum(logits, labels)

    # Additions to training from outside the task, set on an instance by whoever builds the run
    # (llmtune.continual: penalties, distillation, replay); empty by default.
    # - loss_terms: term(model, batch, logits, labels) -> a tensor SUMMED over the micro-batch's
    #   labelled positions, as `loss` is. A penalty P that does not depend on the data is
    #   returned as P x (labelled positions): the engine's division by the step's labelled
    #   positions then leaves exactly P per optimizer step, whatever the accumulation or the
    #   number of processes.
    # - train_mixers: mix(features) -> features, applied to each training micro-batch's examples
    #   before `collator` (e.g. examples replayed from earlier data). Random choices draw from
    #   torch's RNG, which the engine seeds per micro-batch: resumed runs draw the same.
    loss_terms: tuple = ()
    train_mixers: tuple = ()

    def training_loss(self, model, batch: dict, labels):
        """A training micro-batch's objective, summed over its labelled positions: `loss` over
        `logits`, plus every term of `loss_terms`."""
        logits, labels = self.logits(model, batch, labels)
        total = self.loss(logits, labels)
        for term in self.loss_terms:
            total = total + term(model, batch, logits, labels)
        return total

    def train_collator(self, tokenizer) -> Callable[[list[dict]], dict]:
        """The training collator: `collator(train=True)` after `train_mixers`."""
        collate, mixers = self.collator(tokenizer, train=True), tuple(self.train_mixers)
        if not mixers:
            return collate

        def mixed(features: list[dict]) -> dict:
            for mix in mixers:
                features = mix(features)
            return collate(features)

        return mixed

    def fingerprint(self) -> dict:
        """Settings a resume must not change (the engine adds step size and PEFT method)."""
        return {"task": self.name, "max_length": self.max_length}

    # ---------------------------------------------------------------- evaluation and use
    def evaluate(self, model, loader, ctx: EvalContext) -> dict[str, float]:
        """Metrics over a loader: `main_metric`, `loss` and `<main_metric>_stderr` (the main
        metric's standard error over the split: trainer.load_best's default margin). Iterate
        `loader` as given: it may end early by raising (a stop signal), which must propagate."""
        from llmtune.tasks import common

        loss = common.run_eval(model, loader, ctx.accelerator, forward=self.logits)
        return {"loss": loss.loss, "loss_stderr": loss.stderr, "perplexity": common.perplexity(loss.loss)}

    def read_input(self, item: Any, where: str) -> dict:
        """One input of `llmtune predict` / `serve` (a text, or an object) as a row for
        `predict`; `where` names it in errors (file and line)."""
        from llmtune.errors import UserError

        if isinstance(item, str):
            return {"text": item}
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            return item
        raise UserError(f"{where}: expected a text or an object with a 'text' field; got {str(item)[:60]!r}.")

    def input_length(self, row: dict) -> int:
        """A cheap size of an input row, to batch inputs of similar length together."""
        return len(str(row.get("text", "")))

    def predict(self, model, rows: list[dict], ctx: PredictContext) -> list[dict]:
        """One JSON-able prediction per row, in order (`llmtune predict`, `serve`)."""
        from llmtune.errors import UserError

        raise UserError(f"task={self.name} has no predictions to make; `llmtune evaluate` scores its runs.")

    # ---------------------------------------------------------------- prompting baselines
    # `llmtune evaluate prompting=MODE`: a model that was not trained on the task is prompted
    # (rows: raw rows of the scored split; demos: raw training rows shown as examples, empty for
    # zero-shot), and its predictions are scored with the task's own metric.
    prompt_modes: tuple[str, ...] = ()      # the PromptSettings.mode values prompt_predict implements

    def prompt_predict(self, model, tokenizer, rows: list[dict], demos: list[dict], settings: PromptSettings) -> list:
        """One prediction per row, in the form `prompt_metrics` scores."""
        from llmtune.errors import UserError

        raise UserError(f"task={self.name} has no prompting baseline (prompting=...); fine-tune it instead (llmtune finetune task={self.name}).")

    def prompt_metrics(self, rows: list[dict], predictions: list) -> dict[str, float]:
        """The task's metrics (the same as `evaluate`'s, without a loss) of `prompt_predict`'s predictions."""
        raise NotImplementedError(f"{type(self).__name__}.prompt_metrics")  # comes with prompt_predict

    # ---------------------------------------------------------------- what final/ records
    def state(self) -> dict:
        """What a trained run must remember to be used again (final/llmtune.json)."""
        return {"labels": list(self.labels)}

    def load_state(self, state: dict) -> None:
        """The inverse of `state`, when a trained run is loaded for the verbs."""
        self.labels = list(state.get("labels") or [])
