"""`llmtune inspect`: what a training run will see, shown before it trains.

Everything comes from training's own code path (llmtune.builders: build_data, make_plan,
build_model, build_optimization; the task's collator; loop.time_steps), so what is shown is
what the run gets. Nothing is written but the histogram PNG; no run directory is created.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmtune.errors import UserError
from llmtune.tasks.base import IGNORE_INDEX

log = logging.getLogger("llmtune")
# A stable colour per label: its index in the task's labels (or a hash of its name) picks one.
PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta", "bright_green", "bright_yellow", "bright_blue", "bright_red")
BINS = 12
BAR = 40  # width of the longest terminal bar


def report(cfg, n: int, steps: int, png: Path | None) -> None:
    """Print the report for a composed, validated config."""
    from accelerate.utils import set_seed

    from llmtune.builders import bitsandbytes_hidden, build_accelerator, build_data, set_matmul_precision
    from llmtune.engine.batching import make_plan

    out = Console(file=sys.stdout, highlight=False)
    accelerator = build_accelerator(cfg)
    with bitsandbytes_hidden(cfg):
        set_seed(cfg.seed)
        set_matmul_precision(cfg.trainer.tf32)
        parts = build_data(cfg, accelerator)
        task, train = parts.task, parts.data["train"]
        lengths = [len(ids) for ids in train["input_ids"]]
        plan = make_plan(lengths, cfg.trainer, accelerator.num_processes, cfg.seed)
        plan.check()
        show_examples(out, task, parts.tokenizer, train, n, cfg.seed)
        full = task.full_lengths(parts.raw["train"], parts.tokenizer)
        show_lengths(out, task, full, lengths, png)
        show_labels(out, task, train)
        show_batching(out, plan, lengths, cfg.trainer, accelerator.process_index)
        if steps > 0:
            show_timing(out, cfg, parts, accelerator, steps)


# ------------------------------------------------------------------ examples
def label_name(task, tokenizer, value: int) -> str:
    """A label's name: the task's class or tag name, else (language modelling) the target token."""
    if task.labels and 0 <= value < len(task.labels):
        return str(task.labels[value])
    return tokenizer.convert_ids_to_tokens(value)


def colour(task, name: str) -> str:
    labels = [str(label) for label in task.labels]
    index = labels.index(name) if name in labels else zlib.crc32(name.encode())
    return PALETTE[index % len(PALETTE)]


def show_examples(out: Console, task, tokenizer, train, n: int, seed: int) -> None:
    """The first n training examples as the collator hands them to the model: each token (subwords
    as the tokenizer spells them) with its label, coloured per label; ignored positions dimmed."""
    import torch

    collate = task.collator(tokenizer, train=True)
    separator = "/" if task.labels else "→"  # a class or tag name, or the next token to predict
    shown = min(n, len(train))
    out.rule(f"{shown} training example{'' if shown == 1 else 's'}: token{separator}label, ignored positions (-100) dimmed")
    for i in range(shown):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random choices in collation (masking) the same every time
            batch = collate([train[i]])
        tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
        labels = batch["labels"]
        header = f"example {i}: {len(tokens)} tokens"
        if labels.dim() == 1:  # one label for the whole example
            name = label_name(task, tokenizer, int(labels[0]))
            out.print(Text(f"{header}, label ") + Text(name, style=f"bold {colour(task, name)}"))
            labels = [IGNORE_INDEX] * len(tokens)
        elif labels.shape[-1] != len(tokens):  # not one per token (answer span positions, a target text)
            out.print(f"{header}; labels (not one per token): {labels[0].tolist()}")
            labels = [IGNORE_INDEX] * len(tokens)
        else:
            out.print(header)
            labels = labels[0].tolist()
        out.print(example_text(task, tokenizer, tokens, labels, separator))


def example_text(task, tokenizer, tokens: list[str], labels: list[int], separator: str) -> Text:
    text = Text()
    for token, label in zip(tokens, labels, strict=True):
        if label == IGNORE_INDEX:
            text.append(token, style="dim")
        else:
            name = label_name(task, tokenizer, label)
            text.append(f"{token}{separator}{name}", style=colour(task, name))
        text.append(" ")
    return text


# ------------------------------------------------------------------ lengths
def show_lengths(out: Console, task, full: list[int] | None, lengths: list[int], png: Path | None) -> None:
    """Histogram of the examples' token counts (before the cut when the task reports them) and
    the truncation rate at task.max_length."""
    shown = full if full is not None else lengths
    what = "before truncation" if full is not None else "as tokenized"
    out.rule(f"lengths ({what}): {len(shown)} training examples")
    out.print(histogram_table(shown))
    out.print(f"tokens: min {min(shown)}, median {sorted(shown)[len(shown) // 2]}, max {max(shown)}, mean {sum(shown) / len(shown):.1f}")
    if full is None:
        out.print(f"truncated: none (task={task.name} packs its texts into blocks of task.max_length={task.max_length} tokens; nothing is cut)")
    else:
        cut = sum(length > task.max_length for length in full)
        out.print(f"truncated: {cut} of {len(full)} examples ({100 * cut / len(full):.1f}%) are longer than task.max_length={task.max_length} tokens")
    if png is not None:
        write_png(png, shown, task.max_length, what)
        out.print(f"histogram: {png}")


def bins(values: list[int], count: int = BINS) -> list[tuple[int, int, int]]:
    """(low, high, examples) of equal-width integer bins covering the values."""
    low, high = min(values), max(values)
    width = max(1, -(-(high - low + 1) // count))
    counts = Counter((v - low) // width for v in values)
    return [(low + k * width, low + (k + 1) * width - 1, counts.get(k, 0)) for k in range((high - low) // width + 1)]


def histogram_table(values: list[int]) -> Table:
    table = Table(box=None, show_header=True, pad_edge=False)
    table.add_column("tokens", justify="right")
    table.add_column("examples", justify="right")
    table.add_column("")
    rows = bins(values)
    most = max(c for _, _, c in rows)
    for low, high, c in rows:
        span = f"{low}" if low == high else f"{low}-{high}"
        table.add_row(span, str(c), "█" * round(BAR * c / most) if c else "")
    return table


def write_png(path: Path, values: list[int], max_length: int, what: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
        width = max(1, -(-(max(values) - min(values) + 1) // 40))  # whole tokens per bar, at most 40 bars
        edges = [min(values) - 0.5 + k * width for k in range((max(values) - min(values)) // width + 2)]
        ax.hist(values, bins=edges, color="#4c72b0")
        ax.axvline(max_length, color="#c44e52", linestyle="--", label=f"task.max_length={max_length}")
        ax.set_xlabel(f"tokens per example ({what})")
        ax.set_ylabel("training examples")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    except OSError as exc:
        raise UserError(f"inspect.png={path}: cannot write it ({exc.strerror or exc}); give a writable path, or inspect.png=none.") from None


# ------------------------------------------------------------------ labels
def label_counts(task, train) -> Counter | None:
    """Examples per class (or labelled tokens per tag) in the tokenized training split, as the
    loss sees them; None when the task has no label set (language modelling)."""
    if not task.labels or "labels" not in train.column_names:
        return None
    counts: Counter = Counter()
    for value in train["labels"]:
        for label in value if isinstance(value, list) else [value]:
            if label != IGNORE_INDEX:
                counts[str(task.labels[label])] += 1
    return counts


def show_labels(out: Console, task, train) -> None:
    counts = label_counts(task, train)
    if counts is None:
        return
    total = sum(counts.values())
    unit = "labelled tokens" if isinstance(train[0]["labels"], list) else "examples"
    out.rule(f"label balance: {total} {unit}")
    table = Table(box=None, pad_edge=False)
    for name, justify in (("label", "left"), (unit, "right"), ("share", "right"), ("", "left")):
        table.add_column(name, justify=justify)
    most = max(counts.values(), default=1)
    for label in (str(x) for x in task.labels):
        c = counts.get(label, 0)
        table.add_row(Text(label, style=colour(task, label)), str(c), f"{100 * c / max(total, 1):.1f}%", "█" * round(BAR * c / most) if c else "")
    out.print(table)


# ------------------------------------------------------------------ batching and time
def padding(plan, lengths: list[int], tcfg, rank: int) -> tuple[int, int]:
    """(padded tokens, of which padding) over one epoch of this process's micro-batches, with
    the batch lengths rounded up as the collator's bucketing does."""
    multiple = tcfg.get("pad_to_multiple_of") or (64 if tcfg.get("compile") else 1)
    padded = real = 0
    for batch in plan.micro_batches(0, rank):
        longest = max(lengths[i] for i in batch)
        padded += -(-longest // multiple) * multiple * len(batch)
        real += sum(lengths[i] for i in batch)
    return padded, padded - real


def show_batching(out: Console, plan, lengths: list[int], tcfg, rank: int) -> None:
    out.rule("batching")
    used = sum(len(b) for b in plan.micro_batches(0, rank))
    out.print(f"steps per epoch: {plan.steps_per_epoch}")
    out.print(f"a step: {plan.describe()}")
    out.print(f"examples per epoch: {used} of {len(lengths)} (what does not fill a last step is left out)")
    padded, pad = padding(plan, lengths, tcfg, rank)
    grouping = "token budget" if tcfg.get("max_tokens") else ("grouped by length" if tcfg.group_by_length else "random order")
    out.print(f"padding: {100 * pad / max(padded, 1):.1f}% of {padded} padded tokens per epoch ({grouping})")


def show_timing(out: Console, cfg, parts, accelerator, steps: int) -> None:
    """Build the model and optimizer as training does, time a few real optimizer steps, scale."""
    from llmtune.builders import build_model, build_optimization
    from llmtune.engine.loop import Trainer, time_steps

    model, method = build_model(cfg, parts.task, parts.tokenizer)
    plan, optimizer, scheduler, total = build_optimization(cfg, model, method, parts.data["train"], accelerator.num_processes)
    with tempfile.TemporaryDirectory(prefix="llmtune-inspect-") as scratch:  # the loop's run_dir: never written here
        trainer = Trainer(accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, task=parts.task,
                          tokenizer=parts.tokenizer, datasets=parts.data, raw=parts.raw, plan=plan, total_steps=total,
                          run_dir=Path(scratch), tcfg=cfg.trainer, seed=cfg.seed)
        times = time_steps(trainer, steps)
    per_step = sorted(times)[len(times) // 2]
    out.rule("time (estimate)")
    out.print(f"time per step: {per_step:.3f} s (median of {len(times)} timed steps after 1 warm-up, on {accelerator.device.type})")
    out.print(f"time per epoch: ~{clock(per_step * plan.steps_per_epoch)} (estimate: {plan.steps_per_epoch} steps; evaluation not included)")
    out.print(f"this run: {total} steps, ~{clock(per_step * total)} (estimate)")


def clock(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")
