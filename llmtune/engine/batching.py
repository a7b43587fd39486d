"""Which examples form each micro-batch: deterministic, resumable, split-invariant.

The plan is made per optimizer step first: a "step batch" holds batch_size × grad_accum ×
processes examples, drawn from a seeded permutation of the epoch. Each step batch is then split
into micro-batches for every (accumulation index, process). So 1 process at batch 32, 2 processes
at 16, or 8 × 4 accumulation all update on the same 32 examples, and a resumed run jumps straight
to the right micro-batch without reading the skipped data.

TokenBudgetPlan (trainer.max_tokens) is the throughput mode: micro-batches hold up to N padded
tokens instead of N examples, so short examples travel in big batches and long ones in small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmtune.errors import UserError

# Length grouping sorts windows of this many step batches by length, then shuffles the step
# batches: little padding, still random order (the idea of HF's LengthGroupedSampler). Measured
# on skewed lengths at batch 16: a window of 16 left 18-20% padding, 64 about 6%.
GROUP_WINDOW = 64


@dataclass
class BatchPlan:
    lengths: list[int]
    batch_size: int
    grad_accum: int
    world_size: int
    seed: int
    group_by_length: bool = True

    @property
    def step_size(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return len(self.lengths) // self.step_size

    @property
    def fingerprint(self):
        """What a resumed run must keep the same for its batches to line up."""
        return self.step_size

    def describe(self) -> str:
        return f"{self.step_size} examples (batch {self.batch_size} × accum {self.grad_accum} × {self.world_size} process(es))"

    def check(self) -> None:
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the training data has {len(self.lengths)} examples, fewer than one optimizer step takes "
                f"(trainer.batch_size {self.batch_size} × trainer.grad_accum {self.grad_accum} × {self.world_size} process(es) = {self.step_size}); "
                "lower trainer.batch_size or add data."
            )

    def step_batches(self, epoch: int) -> list[list[int]]:
        """This epoch's step batches (global indices); the remainder that does not fill one is dropped."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        size = self.step_size
        usable = self.steps_per_epoch * size
        if self.group_by_length:
            window = size * GROUP_WINDOW
            order = [i for start in range(0, usable, window) for i in sorted(order[start : min(start + window, usable)], key=lambda j: -self.lengths[j])]
        batches = [order[i : i + size] for i in range(0, usable, size)]
        if self.group_by_length:
            shuffle = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in shuffle]
        return batches

    def micro_batches(self, epoch: int, rank: int) -> list[list[int]]:
        """This process's micro-batches for the epoch, grad_accum per optimizer step, in order."""
        out = []
        for batch in self.step_batches(epoch):
            # Sorting inside the step batch keeps micro-batches length-homogeneous; the update
            # does not depend on the split because the loss is normalised per step.
            batch = sorted(batch, key=lambda j: -self.lengths[j])
            chunks = [batch[k : k + self.batch_size] for k in range(0, len(batch), self.batch_size)]
            for accum in range(self.grad_accum):
                out.append(chunks[accum * self.world_size + rank])
        return out


class FixedBatches:
    """A batch sampler over precomputed batches. `batch_size` lets accelerate shard it across
    processes (evenly, with gather_for_metrics dropping the repeats)."""

    def __init__(self, batches: list[list[int]], batch_size: int) -> None:
        self.batches, self.batch_size = batches, batch_size
        self.drop_last = False

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class TokenBudgetPlan:
    """Micro-batches of up to `max_tokens` padded tokens (longest example × examples).

    The examples are sorted by length once and cut greedily, so each micro-batch holds examples
    of nearly equal length (almost no padding) and the set of micro-batches is the same every
    epoch (a fixed number of steps per epoch, as in fairseq). Each epoch shuffles the
    micro-batches with a seeded generator and deals them out, grad_accum × processes per step.
    The loss is normalised by the labelled positions of the whole step, so unequal micro-batch
    sizes are weighted correctly."""

    lengths: list[int]
    max_tokens: int
    grad_accum: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        order = sorted(range(len(self.lengths)), key=lambda i: (-self.lengths[i], i))
        self.chunks: list[list[int]] = []
        for i in order:
            # Sorted longest first, so the first example of a chunk sets its padded length.
            if self.chunks and (len(self.chunks[-1]) + 1) * self.lengths[self.chunks[-1][0]] <= self.max_tokens:
                self.chunks[-1].append(i)
            else:
                self.chunks.append([i])

    @property
    def per_step(self) -> int:
        return self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return len(self.chunks) // self.per_step

    @property
    def fingerprint(self):
        return f"max_tokens {self.max_tokens} × accum {self.grad_accum} × {self.world_size}"

    def describe(self) -> str:
        per_step = sum(len(c) for c in self.chunks[: self.steps_per_epoch * self.per_step]) / max(self.steps_per_epoch, 1)
        return (f"≤ {self.max_tokens} padded tokens per micro-batch (accum {self.grad_accum} × {self.world_size} process(es)), "
                f"{per_step:.1f} examples per step on average")

    def check(self) -> None:
        longest = max(self.lengths, default=0)
        if longest > self.max_tokens:
            raise UserError(
                f"trainer.max_tokens={self.max_tokens} is smaller than the longest training example ({longest} tokens); "
                f"set trainer.max_tokens to at least {longest} (task.max_length always suffices)."
            )
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the training data makes {len(self.chunks)} micro-batch(es) of ≤ {self.max_tokens} tokens, fewer than one optimizer step takes "
                f"(trainer.grad_accum {self.grad_accum} × {self.world_size} process(es)); lower trainer.max_tokens or add data."
            )

    def micro_batches(self, epoch: int, rank: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.chunks), generator=generator).tolist()
        out = []
        for step in range(self.steps_per_epoch):
            dealt = order[step * self.per_step : (step + 1) * self.per_step]
            for accum in range(self.grad_accum):
                out.append(self.chunks[dealt[accum * self.world_size + rank]])
        return out


def make_plan(lengths: list[int], tcfg, world_size: int, seed: int):
    """The batch plan trainer.max_tokens asks for: token budget, or a fixed number of examples."""
    if tcfg.get("max_tokens"):
        return TokenBudgetPlan(lengths, int(tcfg.max_tokens), tcfg.grad_accum, world_size, seed)
    return BatchPlan(lengths, tcfg.batch_size, tcfg.grad_accum, world_size, seed, tcfg.group_by_length)


# Padding values for the batch keys collators produce; any other key pads with 0.
_PAD_VALUES = {"attention_mask": 0, "labels": -100, "token_type_ids": 0, "position_ids": 0}


def pad_to_multiple(batch: dict, multiple: int, pad_id: int) -> dict:
    """Right-pad every [batch, length] tensor to a length that is a multiple of `multiple`, so
    a compiled model sees a few bucketed shapes. Per-example tensors (class labels) are left."""
    length = batch["input_ids"].shape[1]
    extra = -length % multiple
    if not extra:
        return batch
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == length:  # not metadata
            fill = pad_id if key == "input_ids" else _PAD_VALUES.get(key, 0)
            value = torch.nn.functional.pad(value, (0, extra), value=fill)
        out[key] = value
    return out


def bucketed(collate, tcfg, tokenizer):
    """The collator, with batch lengths rounded up to trainer.pad_to_multiple_of, or to 64
    under trainer.compile (a few repeating shapes to compile instead of one per length)."""
    multiple = tcfg.get("pad_to_multiple_of") or (64 if tcfg.get("compile") else None)
    if not multiple:
        return collate
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return lambda features: pad_to_multiple(collate(features), multiple, pad_id)
