"""Experience replay: examples of earlier stages, kept in a fixed-size buffer, are mixed into
every training micro-batch of later stages.

- The buffer is a reservoir sample of all earlier stages' training examples: each example gets
  a random key from the seed (per stage, per row) and the buffer holds the examples with the
  smallest keys that fit its size, counted in examples (continual.buffer_size) or in tokens
  (continual.buffer_tokens). That is a uniform sample of everything seen so far (reservoir
  sampling with random keys), the same in every run with the same seed, and the buffer after
  stage t holds what it held after stage t-1 minus what new keys pushed out.
- Mixing: a micro-batch of n new examples gets round(n * r / (1 - r)) buffer examples added
  (r = continual.replay_ratio, the replayed share of the batch), drawn with torch's RNG, which
  the engine seeds per micro-batch: a resumed stage draws the same examples.
"""

from __future__ import annotations

import random

import torch

from llmtune.continual.methods.base import Method, require_positive
from llmtune.continual.stagedata import as_features, stage_raw, tokenized
from llmtune.errors import UserError


def reservoir_keys(seed: int, stage: int, rows: int) -> list[float]:
    """The random key of each row of a stage: fixed by (seed, stage)."""
    rng = random.Random(seed * 1_000_003 + stage)
    return [rng.random() for _ in range(rows)]


def select_buffer(keys: list[tuple[float, int, int]], sizes: list[int], budget: int) -> list[tuple[int, int]]:
    """(stage, row) of the buffer: the smallest keys whose sizes (1 per example, or tokens) fit
    in `budget`. `keys`: (key, stage, row); `sizes` aligned with it."""
    chosen, used = [], 0
    for (_, stage, row), size in sorted(zip(keys, sizes, strict=True)):
        if used + size > budget:
            break
        chosen.append((stage, row))
        used += size
    return sorted(chosen)


def replay_count(n: int, ratio: float) -> int:
    """Buffer examples to add to a micro-batch of n new ones, so they make `ratio` of it."""
    return round(n * ratio / (1.0 - ratio))


def mixer(buffer: list[dict], ratio: float, rank: int = 0):
    """A train mixer (llmtune.tasks.base: train_mixers) adding replayed examples to a micro-batch."""

    def mix(features: list[dict]) -> list[dict]:
        k = replay_count(len(features), ratio)
        if k == 0 or not buffer:
            return features
        # Seeded from the engine's per-micro-batch RNG; the rank keeps processes from all
        # replaying the same examples.
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())) + rank)
        picks = torch.randint(0, len(buffer), (k,), generator=generator).tolist()
        return [*features, *(buffer[i] for i in picks)]

    return mix


class Replay(Method):
    method = "replay"

    def __init__(self, replay_ratio: float = 0.3, buffer_size: int | None = 200, buffer_tokens: int | None = None) -> None:
        ratio = require_positive("replay_ratio", replay_ratio)
        if ratio >= 1:
            raise UserError(f"continual.replay_ratio={replay_ratio}: the replayed share of each batch must be below 1 (e.g. 0.3).")
        if (buffer_size is None) == (buffer_tokens is None):
            raise UserError("continual: give the buffer's size in examples (continual.buffer_size=200) or in tokens (continual.buffer_tokens=20000), not both: set the other to null.")
        self.ratio, self.buffer_size, self.buffer_tokens = ratio, buffer_size, buffer_tokens
        for name, value in (("buffer_size", buffer_size), ("buffer_tokens", buffer_tokens)):
            if value is not None:
                require_positive(name, value, allow_zero=False)

    def check(self, heads: str) -> None:
        if heads != "shared":
            raise UserError("continual=replay trains earlier stages' examples through the shared head; it needs heads=shared.")

    def attach(self, trainer, ctx) -> None:
        if ctx.index == 1 or self.ratio == 0:
            return
        buffer = self.buffer(trainer.task, trainer.tokenizer, ctx)
        rank = trainer.accelerator.process_index
        trainer.task.train_mixers = (*trainer.task.train_mixers, mixer(buffer, self.ratio, rank))

    def buffer(self, task, tokenizer, ctx) -> list[dict]:
        """The buffer's examples, tokenized for the current task."""
        from datasets import concatenate_datasets

        parts, keys = [], []
        for stage, cfg in enumerate(ctx.earlier_cfgs(), start=1):
            rows = stage_raw(cfg)["train"]
            parts.append(tokenized(task, tokenizer, rows, split=f"replay-{stage}"))
            keys += [(key, stage, row) for row, key in enumerate(reservoir_keys(ctx.seed, stage, len(rows)))]
        data = concatenate_datasets(parts)
        lengths = [len(ids) for ids in data["input_ids"]]
        sizes = lengths if self.buffer_tokens is not None else [1] * len(lengths)
        offsets = [sum(len(p) for p in parts[:i]) for i in range(len(parts))]
        chosen = select_buffer(keys, sizes, self.buffer_tokens or self.buffer_size)
        return as_features(data.select([offsets[stage - 1] + row for stage, row in chosen]))
