"""Learning-rate schedules: transformers' schedules, with warmup given as a ratio or steps."""

from __future__ import annotations

from llmtune.errors import UserError


def build(optimizer, num_training_steps: int, *, name: str = "linear", warmup_ratio: float = 0.0, warmup_steps: int | None = None):
    from transformers import get_scheduler
    from transformers.trainer_utils import SchedulerType

    valid = [s.value for s in SchedulerType]
    if name not in valid:
        raise UserError(f"scheduler.name={name!r}: not a schedule; choose one of {', '.join(valid)}.")
    if warmup_steps is None:
        warmup_steps = int(round(warmup_ratio * num_training_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=num_training_steps)
