"""The Task contract: the seam between the generic engine (and the verbs) and one task.

A task is a class deriving from `Task`, configured from `conf/task/<name>.yaml` (`_target_`).
`Task` declares EVERY member the engine, the data loader and the verbs (evaluate, predict,
export, serve) may use, each with its default here; nothing outside llmtune/tasks/ probes a task
with getattr or names one. When the engine needs something new from tasks, it becomes a member
here with a default, never a special case elsewhere. Adding a task is one module in
llmtune/tasks/ plus one YAML.

Order of calls in a training run: `setup(raw)` (checks the data, builds label maps) ->
`model_kwargs()` -> `texts(...)` (tokenizer training, unknown-token check) -> `preprocess` ->
`collator` -> per batch `logits` and `loss` -> `evaluate` -> `state()` into final/llmtune.json.
A trained run is loaded for the verbs with `load_state(state)` instead of `setup`; `llmtune
evaluate` then calls `check_eval(raw)` on the split it scores, and `preprocess` onward as above.
`preprocess` gets only the splits to tokenize: evaluation passes one split and no "train".

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


@dataclass
class PredictContext:
    """What `Task.predict` gets besides the model and the rows."""

    tokenizer: Any
    device: Any = "cpu"
    params: dict = field(default_factory=dict)   # the verb's options: top_k, max_new_tokens, temperature, top_p, ...


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
    # What `llmtune predict` / `serve` accept beyond the inputs, with a sample value of each
    # type (the verbs check names and types against it).
    predict_params: dict[str, Any] = {}

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

    # ---------------------------------------------------------------- what final/ records
    def state(self) -> dict:
        """What a trained run must remember to be used again (final/llmtune.json)."""
        return {"labels": list(self.labels)}

    def load_state(self, state: dict) -> None:
        """The inverse of `state`, when a trained run is loaded for the verbs."""
        self.labels = list(state.get("labels") or [])
