"""BatchPlan: which examples form each optimizer step and micro-batch."""

from __future__ import annotations

import random

import pytest

from llmtune.engine.batching import BatchPlan
from llmtune.errors import UserError


def _lengths(n: int = 203, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 120) for _ in range(n)]


@pytest.mark.parametrize("group", [True, False])
def test_deterministic_per_seed_and_epoch(group):
    lengths = _lengths()
    a = BatchPlan(lengths, 8, 1, 1, seed=7, group_by_length=group)
    b = BatchPlan(list(lengths), 8, 1, 1, seed=7, group_by_length=group)
    assert a.step_batches(0) == b.step_batches(0)
    assert a.step_batches(3) == b.step_batches(3)
    assert a.step_batches(0) != a.step_batches(1)  # a new order every epoch
    other_seed = BatchPlan(lengths, 8, 1, 1, seed=8, group_by_length=group)
    assert other_seed.step_batches(0) != a.step_batches(0)


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize(("batch", "accum", "world"), [(8, 1, 1), (2, 4, 1), (4, 1, 2), (1, 3, 3)])
def test_epoch_step_batches_are_disjoint_and_cover(group, batch, accum, world):
    lengths = _lengths()
    plan = BatchPlan(lengths, batch, accum, world, seed=3, group_by_length=group)
    assert plan.step_size == batch * accum * world
    assert plan.steps_per_epoch == len(lengths) // plan.step_size
    for epoch in range(2):
        batches = plan.step_batches(epoch)
        assert len(batches) == plan.steps_per_epoch
        assert all(len(b) == plan.step_size for b in batches)
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat)) == plan.steps_per_epoch * plan.step_size
        assert set(flat) <= set(range(len(lengths)))


def _per_step_sets(plan: BatchPlan, epoch: int) -> list[set[int]]:
    """The examples each optimizer step trains on, gathered over accumulation and processes."""
    per_rank = [plan.micro_batches(epoch, rank) for rank in range(plan.world_size)]
    steps = []
    for step in range(plan.steps_per_epoch):
        examples: list[int] = []
        for rank in range(plan.world_size):
            micro = per_rank[rank][step * plan.grad_accum : (step + 1) * plan.grad_accum]
            assert len(micro) == plan.grad_accum
            assert all(len(m) == plan.batch_size for m in micro)
            for m in micro:
                examples += m
        assert len(examples) == len(set(examples)) == plan.step_size  # no example twice in a step
        steps.append(set(examples))
    return steps


@pytest.mark.parametrize("group", [True, False])
def test_same_examples_per_step_whatever_the_split(group):
    lengths = _lengths(150)
    one = BatchPlan(lengths, 8, 1, 1, seed=11, group_by_length=group)
    accumulated = BatchPlan(lengths, 2, 4, 1, seed=11, group_by_length=group)
    two_ranks = BatchPlan(lengths, 4, 1, 2, seed=11, group_by_length=group)
    for epoch in range(2):
        reference = _per_step_sets(one, epoch)
        assert reference == [set(b) for b in one.step_batches(epoch)]
        assert _per_step_sets(accumulated, epoch) == reference
        assert _per_step_sets(two_ranks, epoch) == reference


def test_ranks_get_disjoint_micro_batches():
    plan = BatchPlan(_lengths(), 4, 2, 2, seed=0)
    rank0 = [i for m in plan.micro_batches(0, 0) for i in m]
    rank1 = [i for m in plan.micro_batches(0, 1) for i in m]
    assert not set(rank0) & set(rank1)
    assert len(rank0) == len(rank1) == plan.steps_per_epoch * plan.batch_size * plan.grad_accum


def _padding(plan: BatchPlan, lengths: list[int]) -> int:
    pad = 0
    for rank in range(plan.world_size):
        for micro in plan.micro_batches(0, rank):
            longest = max(lengths[i] for i in micro)
            pad += sum(longest - lengths[i] for i in micro)
    return pad


def test_length_grouping_reduces_padding():
    lengths = _lengths(1000, seed=5)
    grouped = _padding(BatchPlan(lengths, 8, 1, 1, seed=0, group_by_length=True), lengths)
    plain = _padding(BatchPlan(lengths, 8, 1, 1, seed=0, group_by_length=False), lengths)
    assert grouped < 0.5 * plain, (grouped, plain)


def test_length_grouping_still_shuffles_steps():
    # Grouping sorts within windows; the order of step batches must not be longest-first.
    lengths = _lengths(1000, seed=5)
    batches = BatchPlan(lengths, 8, 1, 1, seed=0, group_by_length=True).step_batches(0)
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest, reverse=True)


def test_check_raises_when_data_is_smaller_than_one_step():
    plan = BatchPlan([5] * 7, 4, 2, 1, seed=0)
    assert plan.steps_per_epoch == 0
    with pytest.raises(UserError, match="batch_size"):
        plan.check()
    BatchPlan([5] * 8, 4, 2, 1, seed=0).check()  # exactly one step is enough
