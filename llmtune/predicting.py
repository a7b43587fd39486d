"""Predictions from a trained run, batched by length (`llmtune predict`, and `serve` may reuse it).

Inputs of similar length share a batch, so a batch pads to little more than its own longest
input; the outputs come back in the inputs' order. Nothing here reads files or parses command
lines: rows are what `task.read_input` returned, params the task's `predict_params` (checked by
the caller; `param_types` gives their types).

    trained = load_trained("runs/ner/final")
    rows = [trained.task.read_input(text, f"input {i}") for i, text in enumerate(texts, 1)]
    for prediction in iter_predictions(trained, rows, {}, batch_size=32):
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

# Inputs sorted together when streaming: large enough that batches come out nearly uniform in
# length, small enough that the first outputs appear soon and memory stays flat.
WINDOW = 1024


def param_types(task) -> dict[str, type]:
    """The task's predict params and their types (from the sample values it declares)."""
    return {name: type(sample) for name, sample in task.predict_params.items()}


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indexes of the inputs grouped into batches of similar length, longest first (a batch
    that does not fit in memory fails at once, not at the end); ties keep input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def predict_batched(trained, rows: Sequence[dict], params: dict | None = None, batch_size: int = 32,
                    progress: Callable[[int], Any] | None = None) -> list[dict]:
    """One prediction per row, in the rows' order. `progress(n)` is told after each batch how
    many more rows are done."""
    import torch

    from llmtune.tasks.base import PredictContext

    task, model = trained.task, trained.model
    ctx = PredictContext(tokenizer=trained.tokenizer, device=next(model.parameters()).device, params=dict(params or {}))
    outputs: list[dict | None] = [None] * len(rows)
    # inference_mode: no autograd bookkeeping at all (the tasks' own no_grad is weaker).
    with torch.inference_mode():
        for batch in length_batches([task.input_length(row) for row in rows], max(1, int(batch_size))):
            predicted = task.predict(model, [rows[i] for i in batch], ctx)
            if len(predicted) != len(batch):  # a task bug: say so rather than misalign outputs
                raise RuntimeError(f"task {task.name}: predict returned {len(predicted)} outputs for {len(batch)} inputs")
            for i, output in zip(batch, predicted, strict=True):
                outputs[i] = output
            if progress is not None:
                progress(len(batch))
    return outputs  # type: ignore[return-value]  # every slot is filled above


def iter_predictions(trained, rows: Sequence[dict], params: dict | None = None, batch_size: int = 32,
                     progress: Callable[[int], Any] | None = None, window: int = WINDOW) -> Iterator[dict]:
    """`predict_batched` over consecutive windows of `window` rows: the predictions, in input
    order, as each window finishes (so output can stream while later inputs are predicted)."""
    for start in range(0, len(rows), window):
        yield from predict_batched(trained, rows[start:start + window], params, batch_size, progress)
