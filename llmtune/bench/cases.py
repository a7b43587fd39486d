"""Benchmark cases: skewed-length data built from llmtune's built-in samples, and settings."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from llmtune.tasks.clm import CLMTask

RUNNERS = ("llmtune", "hf", "hf_group_by_length", "raw")
CPU_CASES = ("cls", "ner", "mlm", "clm", "sft")
DEFAULT_PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16
DEFAULT_OUT = "benchmarks/results/cpu.json"


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One benchmark case: a composed llmtune config plus the training rows behind it."""

    name: str
    command: str  # "finetune" or "pretrain" (the primary config)
    overrides: list[str]  # Hydra overrides: task, model, peft, task.max_length, ...
    rows: list[dict]  # training examples, written to a jsonl file (data.train_file)
    batch_size: int = 16
    steps: int = 30
    warmup: int = 5  # step intervals left out of the medians and tokens/s
    precision: str = "no"
    runners: tuple[str, ...] = RUNNERS
    description: str = ""
    # Packed cases: llmtune's batch is rows, as many as hold about the real tokens of batch_size
    # samples (set once the data is tokenized), so every runner trains on similar tokens per step.
    packed_rows: bool = False
    # Extra llmtune runs with more overrides, reported as "llmtune+NAME" (e.g. the token-budget
    # mode, which changes the samples per step and so is shown apart from the like-for-like run).
    variants: dict[str, list[str]] = field(default_factory=dict)


def _lognormal_lengths(rng: random.Random, n: int, median: float, sigma: float, cap: int) -> list[int]:
    return [max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def skewed_classification_rows(
    n: int = 2000, seed: int = 0, median_words: float = 21, sigma: float = 1.0, max_words: int = 600
) -> list[dict]:
    """Classification examples with a realistic, right-skewed length distribution: each joins
    texts of one label from llmtune's built-in data until a log-normal number of words is
    reached (median ~25 tokens, a long tail truncated at task.max_length)."""
    from llmtune.data.builtin import builtin_splits

    rng = random.Random(seed)
    base = builtin_splits("classification")["train"]
    by_label: dict[str, list[list[str]]] = {}
    for row in base:
        by_label.setdefault(row["label"], []).append(row["text"].split())
    labels = sorted(by_label)
    rows = []
    for target in _lognormal_lengths(rng, n, median_words, sigma, max_words):
        label = rng.choice(labels)
        words: list[str] = []
        while len(words) < target:
            words += rng.choice(by_label[label])
        rows.append({"text": " ".join(words[:target]), "label": label})
    return rows


def skewed_ner_rows(n: int = 2000, seed: int = 0, median_words: float = 21, sigma: float = 1.0, max_words: int = 600) -> list[dict]:
    """NER examples built like skewed_classification_rows: built-in tagged sentences joined
    (tokens and tags together) up to a log-normal number of words."""
    from llmtune.data.builtin import builtin_splits

    rng = random.Random(seed)
    base = builtin_splits("ner")["train"]
    rows = []
    for target in _lognormal_lengths(rng, n, median_words, sigma, max_words):
        tokens: list[str] = []
        tags: list[str] = []
        while len(tokens) < target:
            row = rng.choice(base)
            tokens += row["tokens"]
            tags += row["tags"]
        rows.append({"tokens": tokens[:target], "tags": tags[:target]})
    return rows


def text_rows() -> list[dict]:
    """The built-in pretraining text (paragraphs of Python's help topics), training split."""
    from llmtune.data.builtin import builtin_splits

    return [{"text": row["text"]} for row in builtin_splits("text")["train"]]


def sft_rows(n: int = 2000) -> list[dict]:
    """Prompt/response pairs from the built-in SFT data (skewed lengths: median ~40 tokens, a
    long tail past 256); more than one split's worth comes from further seeds."""
    from llmtune.data.builtin import builtin_splits

    rows: list[dict] = []
    seed = 0
    while len(rows) < n:
        rows += builtin_splits("sft", seed=seed)["train"]
        seed += 1
    return rows[:n]


# The opt-in throughput mode on the variable-length CPU cases: micro-batches of up to 1024
# padded tokens (about 40 median-length examples, 4 of the longest) instead of batch_size examples.
TOKEN_BUDGET = {"max_tokens": ["trainer.max_tokens=1024"]}

MODELS = {
    # size -> (encoder config, decoder config)
    "small": ("small_mlm", "small_clm"),
    "tiny": ("tiny_bert", "tiny_llama"),
}


def cpu_cases(names: list[str], *, size: str, steps: int, warmup: int, batch_size: int, examples: int, precision: str) -> list[Case]:
    encoder, decoder = MODELS[size]
    common = {"batch_size": batch_size, "steps": steps, "warmup": warmup, "precision": precision}

    def skewed(name: str, task: str, rows: Callable[[int], list[dict]], what: str) -> Case:
        """A fine-tuning case on skewed lengths, with the token-budget variant."""
        return Case(name, "finetune", [f"task={task}", f"model={encoder}", "task.max_length=256"], rows(examples),
                    description=f"{what}, {encoder}, skewed lengths (max 256)", variants=TOKEN_BUDGET, **common)

    builders: dict[str, Callable[[], Case]] = {
        "cls": lambda: skewed("cls", "classification", skewed_classification_rows, "classification"),
        "ner": lambda: skewed("ner", "ner", skewed_ner_rows, "NER"),
        "mlm": lambda: Case(
            "mlm",
            "pretrain",
            ["task=mlm", f"model={encoder}"],
            text_rows(),
            description=f"masked-LM pretraining, {encoder}, 128-token blocks",
            **common,
        ),
        "clm": lambda: Case(
            "clm",
            "pretrain",
            ["task=clm", f"model={decoder}"],
            text_rows(),
            description=f"causal-LM pretraining, {decoder}, 128-token blocks",
            **common,
        ),
        "sft": lambda: Case(
            "sft",
            "finetune",
            ["task=sft", f"model={decoder}", "task.packing=true", "task.max_length=256"],
            sft_rows(examples),
            description=f"SFT, {decoder}, mixed lengths: llmtune packs samples into 256-token rows (rows/step: the real tokens "
            "of batch_size samples); HF and raw pad batch_size samples",
            packed_rows=True,
            **common,
        ),
    }
    unknown = [n for n in names if n not in builders]
    if unknown:
        from llmtune.errors import UserError, did_you_mean

        raise UserError(f"bench: unknown case '{unknown[0]}'.{did_you_mean(unknown[0], list(builders))} Cases: {', '.join(builders)}.")
    return [builders[n]() for n in names]


@dataclass
class UnpackedCLMTask(CLMTask):
    """Causal LM on whole examples (SFT-style, loss on every token): one row per example,
    truncated to max_length, EOS appended, padded per batch, instead of the clm task's packing
    into full blocks. Used by the GPU benchmark's mixed-length case through
    `task._target_=llmtune.bench.UnpackedCLMTask` (random-token rows have no prompt/response
    split; task=sft is llmtune's SFT task, see the CPU `sft` case)."""

    def preprocess(self, raw, tokenizer, num_proc=None):
        eos = tokenizer.eos_token_id

        def encode(batch):
            ids = tokenizer(batch["text"], add_special_tokens=False, truncation=True, max_length=self.max_length - 1)["input_ids"]
            return {"input_ids": [row + [eos] for row in ids]}

        return raw.map(encode, batched=True, remove_columns=raw["train"].column_names, num_proc=num_proc, desc="tokenizing")
