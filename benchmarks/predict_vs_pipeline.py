"""Inference throughput: `llmtune predict`'s batching vs `transformers.pipeline`, same model.

Both get the same loaded model (a run's final/, full fine-tuning), the same inputs (built-in
sentences of the run's task) and the same batch size; model loading is not timed. llmtune's
side is the code `llmtune predict` runs (llmtune.predicting.predict_batched: length-sorted
batches, outputs back in input order), the pipeline's its own batching in input order
(token-classification with aggregation_strategy="first", i.e. word-level entities as llmtune
gives; text-classification with top_k=None, every label's score as llmtune gives).

    llmtune finetune task=classification trainer.max_steps=30 output_dir=/tmp/cls
    python benchmarks/predict_vs_pipeline.py /tmp/cls/final --n 1000 --batch-size 32

Prints inputs/s of each (best of --repeats runs) and llmtune/pipeline, plus how often the two
agree on the predicted labels (a check that both did the same work).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PIPELINES = {"AutoModelForSequenceClassification": ("text-classification", {"top_k": None}),
             "AutoModelForTokenClassification": ("token-classification", {"aggregation_strategy": "first"})}


def texts_for(task: str, n: int) -> list[str]:
    """n built-in sentences of the task (train then validation), as plain text."""
    from llmtune.data.builtin import builtin_splits

    rows = [row for split in ("train", "validation", "test") for row in builtin_splits(task)[split]]
    texts = [row["text"] if "text" in row else " ".join(row["tokens"]) for row in rows]
    return (texts * (n // len(texts) + 1))[:n]


def best_times(fns: dict, repeats: int) -> dict:
    """{name: (best seconds, last output)}; the runs alternate, so load from other processes
    on the machine falls on both sides alike."""
    best = {name: (float("inf"), None) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            out = fn()
            best[name] = (min(best[name][0], time.perf_counter() - start), out)
    return best


def labels_llmtune(outputs: list[dict]) -> list:
    return [o["label"] if "label" in o else [(e["type"], e["start"], e["end"]) for e in o["entities"]] for o in outputs]


def labels_pipeline(outputs: list) -> list:
    if outputs and isinstance(outputs[0], list) and outputs[0] and "label" in outputs[0][0]:
        return [max(o, key=lambda s: s["score"])["label"] for o in outputs]
    return [[(e["entity_group"], e["start"], e["end"]) for e in o] for o in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a run's final/ (full fine-tuning, classification or ner)")
    parser.add_argument("--n", type=int, default=1000, help="inputs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()

    import torch
    import transformers

    from llmtune.predicting import predict_batched
    from llmtune.trained import load_trained

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    trained = load_trained(args.path, "cpu")
    kind, kwargs = PIPELINES[trained.task.auto_class]
    pipe = transformers.pipeline(kind, model=trained.model, tokenizer=trained.tokenizer, device="cpu", **kwargs)
    texts = texts_for(trained.task.name, args.n)
    rows = [trained.task.read_input(text, f"input {i}") for i, text in enumerate(texts, 1)]

    # Warm-up (first-call allocations, thread pools), then the timed runs.
    predict_batched(trained, rows[: args.batch_size], batch_size=args.batch_size)
    pipe(texts[: args.batch_size], batch_size=args.batch_size)
    timed = best_times({"llmtune": lambda: predict_batched(trained, rows, batch_size=args.batch_size),
                        "pipeline": lambda: pipe(texts, batch_size=args.batch_size)}, args.repeats)
    (ours, ours_out), (theirs, theirs_out) = timed["llmtune"], timed["pipeline"]

    agree = sum(a == b for a, b in zip(labels_llmtune(ours_out), labels_pipeline(theirs_out), strict=True)) / len(texts)
    print(f"model: {trained.describe()}; {len(texts)} inputs, batch_size {args.batch_size}, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"llmtune predict (predict_batched): {len(texts) / ours:8.1f} inputs/s ({ours:.2f} s)")
    print(f"transformers.pipeline({kind!r}): {len(texts) / theirs:8.1f} inputs/s ({theirs:.2f} s)")
    print(f"ratio llmtune/pipeline: {theirs / ours:.2f}x; same predicted labels on {agree:.1%} of inputs")


if __name__ == "__main__":
    main()
