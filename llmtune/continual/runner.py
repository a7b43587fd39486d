"""A sequence's runs, their evaluation, and resuming an interrupted sequence.

<out>/continual.json records the sequence (method, stages, heads) and, after each stage, its row
of the accuracy matrix; it is written before the first stage trains, so a second attempt at the
same directory without trainer.resume=auto is refused before anything changes. With
trainer.resume=auto, stages with a row are skipped, a stage trained but not yet scored is only
scored, and the stage that was interrupted continues from its newest checkpoint (the stage's
own trainer.resume=auto).

Each stage is an ordinary training run (llmtune.job.run_job) with a StageExtension: it keeps
the earlier label ids (shared heads), loads the previous stage's weights (unless the method
starts every stage from the initial model) and lets the method attach its loss terms or batch
mixers. Scores are the main metric of each stage's task on its test split (else validation).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import open_dict

from llmtune.continual import report
from llmtune.continual.methods.base import Method, StageContext, build_method
from llmtune.continual.sequence import HEADS, Stage, compose_stage, stages_of
from llmtune.continual.stagedata import eval_split_name, stage_raw
from llmtune.continual.transfer import copy_weights, keep_label_ids
from llmtune.errors import UserError
from llmtune.extension import RunExtension

log = logging.getLogger("llmtune")
STATE = "continual.json"
STATE_DIR = "continual-state"


class StageExtension(RunExtension):
    """What one stage's run takes from the stages before it (llmtune.extension)."""

    keeps_processes = True  # under torchrun the next stage (and the scoring) use the same group

    def __init__(self, method: Method, ctx: StageContext) -> None:
        self.method, self.ctx = method, ctx

    def _continues(self) -> bool:
        return self.ctx.previous_final is not None and self.method.starts_from_previous

    def on_data(self, task, raw) -> None:
        if self._continues() and self.ctx.heads == "shared":
            info = json.loads((self.ctx.previous_final / "llmtune.json").read_text())
            keep_label_ids(task, info.get("labels") or [])

    def on_model(self, model, task):
        if self._continues():
            from llmtune.trained import load_trained

            source = load_trained(self.ctx.previous_final).model.state_dict()
            counts = copy_weights(source, model, skip_heads=self.ctx.heads == "per_task")
            log.info("stage %d starts from %s: %d tensors copied, %d grown (old head rows copied), %d kept as initialised",
                     self.ctx.index, self.ctx.previous_final, counts["copied"], counts["grown"], counts["kept"])
        return model

    def on_trainer(self, trainer) -> None:
        self.method.attach(trainer, self.ctx)


@dataclass
class Sequence:
    config_dir: str
    config_name: str
    args: list[str]
    cfg: object
    stages: list[Stage]
    method: Method
    out: Path

    @property
    def heads(self) -> str:
        return str(self.cfg.get("heads") or "shared")

    def final(self, index: int) -> Path:
        return self.out / self.stages[index - 1].dir_name / "final"

    def record(self) -> dict:
        return {"method": self.method.method, "stages": [s.name for s in self.stages], "heads": self.heads}


def prepare(config_dir: str, config_name: str, args: list[str]) -> Sequence:
    """The sequence a command line describes, every stage's config composed (and checked)."""
    from llmtune.config import _compose, validate

    cfg = _compose(config_dir, config_name, args)
    heads = str(cfg.get("heads") or "shared")
    if heads not in HEADS:
        raise UserError(f"heads={heads}: expected one of {', '.join(HEADS)} (shared: one head, labels accumulate; per_task: a head per stage).")
    method = build_method(cfg.continual)
    method.check(heads)
    stages = stages_of(cfg)
    out = Path(str(cfg.output_dir)).expanduser().resolve()
    seq = Sequence(config_dir, config_name, args, cfg, stages, method, out)
    for stage in stages:
        validate(stage_config(seq, stage))
    return seq


def stage_config(seq: Sequence, stage: Stage):
    extra = Stage(stage.index, stage.name, (*stage.overrides, *seq.method.stage_overrides()))
    cfg = compose_stage(seq.config_dir, seq.config_name, seq.args, extra, seq.out)
    if stage.index > 1 and not cfg.model.name_or_path and not cfg.model.tokenizer:
        # A model built from scratch trains its tokenizer on its first data: later stages keep
        # that tokenizer (saved in the first stage's final/), so token ids mean the same.
        with open_dict(cfg):
            cfg.model.tokenizer = str(seq.final(1))
    return cfg


def is_main_process() -> bool:
    """The process that writes the sequence's files. Under torchrun/accelerate launch every
    process runs the whole sequence (each stage's training and scoring are distributed, and
    their results are the same on every process); before the first stage no process group
    exists yet, so the launcher's RANK decides."""
    return int(os.environ.get("RANK", "0")) == 0


def run_sequence(seq: Sequence) -> dict:
    """Train and score every stage not done yet; write and return the report."""
    from llmtune.job import end_processes

    state = _claim(seq) if is_main_process() else _follow(seq)
    cfgs = [stage_config(seq, s) for s in seq.stages]
    try:
        for stage in seq.stages:
            key = str(stage.index)
            if key in state["rows"]:
                log.info("stage %d (%s): done in an earlier attempt; skipped", stage.index, stage.name)
                continue
            if not _trained(seq.final(stage.index).parent):
                _train(seq, stage, cfgs)
            state["rows"][key] = score_row(seq, stage.index, cfgs)
            _save(seq.out, state)
        state["baselines"] = {**state.get("baselines", {}), **_baselines(seq, cfgs, state)}
        _save(seq.out, state)
        return report.write(seq.out, state) if is_main_process() else report.build(state)
    finally:
        end_processes()


def _trained(stage_dir: Path) -> bool:
    return (stage_dir / "metrics.json").is_file() and (stage_dir / "final" / "llmtune.json").is_file()


def _claim(seq: Sequence) -> dict:
    """The sequence's state: new, or the one a resumed sequence left (same method and stages)."""
    path = seq.out / STATE
    resume = seq.cfg.trainer.resume == "auto"
    if path.is_file():
        state = json.loads(path.read_text())
        if not resume:
            raise UserError(
                f"output_dir {seq.out} already holds a continual sequence ({len(state['rows'])} of {len(state['stages'])} stages done); "
                "continue it with trainer.resume=auto, or pick a new output_dir."
            )
        recorded = {k: state.get(k) for k in seq.record()}
        if recorded != seq.record():
            raise UserError(f"trainer.resume=auto: {path} records another sequence ({recorded}); resume it with the same continual, stages and heads, or pick a new output_dir.")
        return state
    if seq.cfg.trainer.resume not in (None, "auto"):
        raise UserError("trainer.resume: a continual sequence resumes with trainer.resume=auto (each stage continues from its own newest checkpoint).")
    if seq.out.exists() and any(seq.out.iterdir()):
        raise UserError(f"output_dir {seq.out} is not empty and holds no continual sequence; pick a new output_dir.")
    state = {**seq.record(), "seed": seq.cfg.seed, "rows": {}, "baselines": {}}
    _save(seq.out, state)
    return state


def _follow(seq: Sequence) -> dict:
    """The state on a process other than the main one: the main process checks and writes it;
    this one reads what an earlier attempt left (resume), else starts the same empty state."""
    path = seq.out / STATE
    if seq.cfg.trainer.resume == "auto" and path.is_file():
        return json.loads(path.read_text())
    return {**seq.record(), "seed": seq.cfg.seed, "rows": {}, "baselines": {}}


def _save(out: Path, state: dict) -> None:
    if not is_main_process():
        return
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{STATE}.tmp"
    partial.write_text(json.dumps(state, indent=1))
    os.replace(partial, out / STATE)


def _train(seq: Sequence, stage: Stage, cfgs: list) -> None:
    from llmtune.job import run_job

    cfg = cfgs[stage.index - 1]
    if seq.cfg.trainer.resume == "auto" and not Path(cfg.output_dir).exists():
        with open_dict(cfg):
            cfg.trainer.resume = None  # nothing of this stage was written yet: a fresh run
    ctx = StageContext(
        index=stage.index, names=[s.name for s in seq.stages], cfgs=cfgs, out=seq.out, seed=int(seq.cfg.seed), heads=seq.heads,
        state_dir=seq.out / STATE_DIR, previous_final=seq.final(stage.index - 1) if stage.index > 1 else None,
    )
    log.info("continual %s: stage %d of %d (%s) -> %s", seq.method.method, stage.index, len(seq.stages), stage.name, cfg.output_dir)
    run_job(cfg, StageExtension(seq.method, ctx))


# ------------------------------------------------------------------ scoring
_RAW: dict = {}


def _eval_data(cfg):
    """The split a stage is scored on, as a one-split DatasetDict (cached per stage data)."""
    from datasets import DatasetDict
    from omegaconf import OmegaConf

    key = json.dumps([OmegaConf.to_container(cfg.data, resolve=True), cfg.task.get("builtin"), cfg.seed], sort_keys=True, default=str)
    if key not in _RAW:
        raw = stage_raw(cfg)
        split = eval_split_name(raw)
        _RAW[key] = DatasetDict({split: raw[split]})
    return _RAW[key]


def model_for(seq: Sequence, trained: int, scored: int):
    """The model that scores stage `scored` after stage `trained`: the method names whose
    final/ (adapters: the scored stage's own); with a head per task, stage `scored`'s head on
    stage `trained`'s backbone. None when that head does not exist yet."""
    from llmtune.trained import load_trained

    source = seq.method.eval_stage(trained, scored)
    if seq.heads == "per_task":
        if scored > trained:
            return None
        run = load_trained(seq.final(scored))
        if source != scored:
            copy_weights(load_trained(seq.final(source)).model.state_dict(), run.model, skip_heads=True)
        return run
    return load_trained(seq.final(source))


def score_row(seq: Sequence, trained: int, cfgs: list) -> dict:
    """Row `trained` of the matrix: each stage's main metric (None where the model cannot
    score the stage: labels it never saw, a head not trained yet)."""
    from llmtune.evaluating import make_accelerator, score

    accelerator = make_accelerator("auto", "no")
    row = {}
    for stage in seq.stages:
        run = model_for(seq, trained, stage.index)
        value = None
        if run is not None:
            try:
                value = score(run, _eval_data(cfgs[stage.index - 1]), accelerator)[run.task.main_metric]
            except UserError as exc:  # e.g. labels the model was never trained on (class-incremental)
                log.info("stage %s cannot be scored after stage %d: %s", stage.name, trained, exc)
        row[stage.name] = value
        log.info("after stage %d, %s on %s: %s", trained, run.task.main_metric if run else "score", stage.name, value)
    row["_metric"] = run.task.main_metric if run is not None else None
    return row


def _baselines(seq: Sequence, cfgs: list, state: dict) -> dict:
    """b_j, the initial model's score on stage j, where forward transfer needs it (a score of
    stage j after stage j-1 exists)."""
    out = {}
    for stage in seq.stages[1:]:
        before = state["rows"].get(str(stage.index - 1), {}).get(stage.name)
        if before is None or stage.name in state.get("baselines", {}):
            continue
        out[stage.name] = initial_score(cfgs[stage.index - 1], seq)
    return out


def initial_score(cfg, seq: Sequence) -> float:
    """The untrained model of a stage's run (pretrained backbone, fresh head) on its eval split."""
    from llmtune.builders import build_model, build_task
    from llmtune.evaluating import make_accelerator, score
    from llmtune.tokenization import load_tokenizer
    from llmtune.trained import TrainedRun

    task = build_task(cfg)
    raw = stage_raw(cfg)
    task.setup(raw)
    tokenizer = load_tokenizer(cfg.model, task, task.texts(raw["train"]))
    model, method = build_model(cfg, task, tokenizer)
    model.eval()
    run = TrainedRun(Path(cfg.output_dir), "initial", None, cfg, task, method, tokenizer, model)
    return score(run, _eval_data(cfg), make_accelerator("auto", "no"))[task.main_metric]
