"""Which examples form each micro-batch: deterministic, resumable, split-invariant.

The plan is made per optimizer step first: a "step batch" holds batch_size × grad_accum ×
processes examples, drawn from a seeded permutation of the epoch. Each step batch is then split
into micro-batches for every (accumulation index, process). So 1 process at batch 32, 2 processes
at 16, or 8 × 4 accumulation all update on the same 32 examples, and a resumed run jumps straight
to the right micro-batch without reading the skipped data.
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
