"""The stages of a sequence and the config of each stage's run.

A stage is a name plus Hydra overrides applied on top of the sequence's own config (the
command line included): `task=ner`, `task.builtin=ner_news`, `data.train_file=...`,
`trainer.max_steps=50`. The user gives them as `stages=[{name: a, task: ner, data: {train_file:
...}, overrides: [...]}, ...]`, or picks a built-in sequence (`sequence=ner-domains`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from llmtune.errors import UserError, did_you_mean

STAGE_KEYS = ("name", "task", "data", "overrides")
# Keys of the sequence's config that list the stages: a stage's config.yaml leaves them out
# (it keeps `continual` and `heads`, which say how the stage was trained).
SEQUENCE_KEYS = ("sequence", "stages")
HEADS = ("shared", "per_task")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Stage:
    index: int                      # 1-based
    name: str
    overrides: tuple[str, ...] = field(default_factory=tuple)

    @property
    def dir_name(self) -> str:
        return f"stage-{self.index}-{self.name}"


def stages_of(cfg: DictConfig) -> list[Stage]:
    """The stages `cfg` names: `stages` when given, else the built-in `sequence`."""
    from llmtune.data.builtin.sequences import SEQUENCES

    if cfg.get("stages"):
        specs = OmegaConf.to_container(cfg.stages, resolve=True)
        if not isinstance(specs, list):
            raise UserError(f"stages={specs!r}: expected a list of stages, e.g. stages='[{{name: a, data: {{train_file: a.jsonl}}}}]'.")
        stages = [_stage(i, spec) for i, spec in enumerate(specs, start=1)]
    elif cfg.get("sequence"):
        if cfg.sequence not in SEQUENCES:
            raise UserError(f"sequence={cfg.sequence}: no such built-in sequence.{did_you_mean(str(cfg.sequence), SEQUENCES)} Choose one of {', '.join(SEQUENCES)}, or give stages=[...].")
        seq = SEQUENCES[cfg.sequence]
        stages = [Stage(i, name, (f"task={seq['task']}", f"task.builtin={kind}")) for i, (name, kind) in enumerate(seq["stages"], start=1)]
    else:
        raise UserError("continual: no stages; pick a built-in sequence (sequence=ner-domains or sequence=topics) or give stages=[...].")
    names = [s.name for s in stages]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UserError(f"stages: the name '{duplicate}' is used twice; give every stage its own name (it names the stage's directory).")
    if len(stages) < 2:
        raise UserError(f"stages: a sequence needs at least two stages; got {len(stages)}.")
    return stages


def _stage(index: int, spec) -> Stage:
    where = f"stages[{index - 1}]"
    if not isinstance(spec, dict):
        raise UserError(f"{where}={spec!r}: a stage is a mapping like {{name: news, task: ner, data: {{train_file: news.conll}}}}.")
    unknown = [k for k in spec if k not in STAGE_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}'.{did_you_mean(unknown[0], STAGE_KEYS)} A stage has {', '.join(STAGE_KEYS)}.")
    name = str(spec.get("name") or f"s{index}")
    if not _NAME.fullmatch(name):
        raise UserError(f"{where}.name={name!r}: use letters, digits, '-', '_' or '.' (it names the stage's directory).")
    overrides = [f"task={spec['task']}"] if spec.get("task") else []
    overrides += [f"data.{k}={v}" for k, v in (spec.get("data") or {}).items()]
    extra = spec.get("overrides") or []
    if not isinstance(extra, list) or not all(isinstance(o, str) and "=" in o for o in extra):
        raise UserError(f"{where}.overrides: expected a list of key=value overrides, e.g. [trainer.max_steps=50].")
    return Stage(index, name, tuple(overrides + extra))


def compose_stage(config_dir: str, config_name: str, args: list[str], stage: Stage, out: Path) -> DictConfig:
    """The config of one stage's run: the sequence's config with the stage's overrides, its
    directory under the sequence's output_dir, without the sequence-only keys."""
    from llmtune.config import _compose, _first_line

    try:
        cfg = _compose(config_dir, config_name, [*args, *stage.overrides])
    except UserError as exc:
        raise UserError(f"stage {stage.name}: {_first_line(exc)}") from None
    with open_dict(cfg):
        cfg.output_dir = str(out / stage.dir_name)
        for key in SEQUENCE_KEYS:
            cfg.pop(key, None)
    return cfg
