"""The Task protocol: the seam between the generic engine and what one task needs.

A task is a plain class configured from `conf/task/<name>.yaml` (`_target_`). The engine only
ever calls what is declared here. Adding a task is one module in llmtune/tasks/ plus one YAML.

Batches: `collator` returns a dict of tensors that the model's forward accepts, plus `labels`
aligned with the model's logits (-100 where nothing is predicted). Causal-LM labels come already
shifted by one, so the engine's loss is the same for every task: cross-entropy summed over
labelled positions, divided by the number of labelled positions in the whole optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

IGNORE_INDEX = -100


@runtime_checkable
class Task(Protocol):
    name: str
    auto_class: str            # "AutoModelForTokenClassification", ...
    peft_task_type: str        # peft TaskType: "SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM", ...
    main_metric: str           # what early stopping, sweeps and summaries optimise
    greater_is_better: bool
    builtin: str               # kind of built-in sample data (llmtune.data.builtin)
    max_length: int
    required_columns: tuple[str, ...]   # columns raw examples must have

    def texts(self, rows: Any) -> Iterable[str]:
        """Plain text of a raw split (to train a tokenizer for a model built from scratch)."""

    def model_kwargs(self, raw: Any) -> dict:
        """Keyword arguments for from_pretrained/from_config: num_labels, id2label, label2id..."""

    def preprocess(self, raw: Any, tokenizer: Any, num_proc: int | None = None) -> Any:
        """Raw DatasetDict -> tokenized DatasetDict (columns the collator reads); `num_proc`
        (data.num_proc) goes to datasets' batched map."""

    def collator(self, tokenizer: Any, train: bool) -> Callable[[list[dict]], dict]:
        """Examples -> batch of tensors; `train` selects e.g. dynamic masking vs fixed masks."""

    def evaluate(self, model: Any, dataloader: Any, accelerator: Any) -> dict[str, float]:
        """Metrics over a dataloader; must include `main_metric`, `loss` and
        `<main_metric>_stderr`, the main metric's standard error over the split (from
        common.run_eval for a loss, common.proportion_stderr for an accuracy or F1): it is
        trainer.load_best's default margin. Iterate `dataloader` as given: during training it
        may end early between batches (a stop signal) by raising, which must propagate."""

    # Optional: `logits(model, batch, labels) -> (logits, labels)` replaces the plain forward
    # (llmtune.tasks.common.model_logits) in training and evaluation, e.g. to score only some
    # positions. The engine looks it up with getattr.
