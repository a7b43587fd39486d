"""What a continual-learning method may do to a stage, with the defaults of plain sequential
fine-tuning (methods/naive.py).

    starts_from_previous  a stage starts from the previous stage's weights (else the initial model)
    stage_overrides       config overrides every stage's run gets (adapters: peft=lora)
    check                 refuse a setting the method cannot serve, before anything runs
    attach                before a stage trains: set trainer.task.loss_terms / train_mixers
    eval_stage            whose final/ scores stage j after stage t (adapters: stage j's own)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.errors import UserError

log = logging.getLogger("llmtune")


@dataclass
class StageContext:
    """What a method sees of the sequence when a stage starts."""

    index: int                       # 1-based index of the stage about to train
    names: list[str]                 # every stage's name, in order
    cfgs: list                       # every stage's run config, in order (their data, their tasks)
    out: Path                        # the sequence's directory
    seed: int
    heads: str = "shared"            # shared | per_task
    state_dir: Path = field(default=None)  # <out>/continual-state: what methods keep between stages
    previous_final: Path | None = None     # the previous stage's final/, None for the first stage

    def earlier_cfgs(self) -> list:
        return self.cfgs[: self.index - 1]


class Method:
    method = "naive"
    starts_from_previous = True

    def stage_overrides(self) -> list[str]:
        return []

    def check(self, heads: str) -> None:
        """Raise UserError for a heads setting the method cannot serve."""

    def attach(self, trainer, ctx: StageContext) -> None:
        """Before stage ctx.index trains (its weights already loaded): add loss terms or batch mixers."""

    def eval_stage(self, trained: int, scored: int) -> int:
        """The stage whose final/ scores stage `scored` after stage `trained` has trained."""
        return trained


def build_method(node) -> Method:
    """The method of the `continual` group. `lambda` (a Python keyword) reaches the
    constructor as `lam`."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(node, resolve=True)
    target = options.pop("_target_", None)
    options.pop("method", None)
    if "lambda" in options:
        options["lam"] = options.pop("lambda")
    try:
        cls = get_class(target)
        return cls(**options)
    except TypeError as exc:
        raise UserError(f"continual: {target} does not take these options ({exc}); check the continual.* keys.") from None
    except Exception as exc:  # noqa: BLE001 -- an unknown _target_ comes in several types
        raise UserError(f"continual: cannot build {target} ({str(exc).splitlines()[0]}); check continual._target_.") from None


def require_positive(name: str, value: float, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"continual.{name}={value!r}: must be a {'non-negative' if allow_zero else 'positive'} number.")
    return float(value)
