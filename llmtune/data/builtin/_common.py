"""Helpers shared by the built-in data generators."""

from __future__ import annotations

import random
from collections.abc import Sequence

SPLIT_SIZES = {"train": 2000, "validation": 300, "test": 300}

# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
NUMBERS = ("two", "three", "five", "seven", "12", "18", "25", "40", "64", "150", "300", "1,200")


def _split_held_out(names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(seen, held_out): every fifth name is kept out of the training split."""
    seen = tuple(n for i, n in enumerate(names) if i % 5 != 4)
    held_out = tuple(n for i, n in enumerate(names) if i % 5 == 4)
    return seen, held_out


def _balanced_labels(rng: random.Random, labels: Sequence[str], size: int) -> list[str]:
    """`size` labels in shuffled order, each label used equally often (up to one)."""
    order = [labels[i % len(labels)] for i in range(size)]
    rng.shuffle(order)
    return order


# --------------------------------------------------------------------------------------------
# NER
# --------------------------------------------------------------------------------------------

