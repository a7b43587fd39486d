"""One training run from a composed config: validate, build, fit, write the outputs.

Outputs (a contract):
    config.yaml        the resolved config
    train_log.jsonl    one JSON object per log step and per evaluation
    metrics.json       final validation/test metrics, the main metric named
    checkpoints/step-N resumable state (atomic)
    final/             save_pretrained model or PEFT adapter + tokenizer + label maps,
                       README.md (model card, llmtune.modelcard)
    plots/             loss, lr and validation-metric curves (PNG; the `plots` callback)
    predictions/       <split>.jsonl: per-example outputs of tasks that generate (source, reference,
                       prediction), from the latest evaluation of that split
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from llmtune.engine.callbacks import Callback
from llmtune.rundir import RUN_MARKERS, RunDir, check_run_dir, hydra_record, run_dir_of

log = logging.getLogger("llmtune")
# The run-directory policy lives in llmtune.rundir; these names stay importable from here.
__all__ = ["RUN_MARKERS", "check_run_dir", "run_dir_of", "run_job"]


def run_job(cfg: DictConfig, extension=None) -> float | None:
    """One training run; `extension` (llmtune.extension.RunExtension) adjusts how it is built."""
    from llmtune.bench.measure import MemoryProbe
    from llmtune.builders import build_accelerator, build_trainer
    from llmtune.config import validate
    from llmtune.engine.loop import fit
    from llmtune.peft.heads import count_parameters
    from llmtune.ui.console import setup_logging

    validate(cfg)
    run_dir = run_dir_of(cfg)
    hydra_files = hydra_record(cfg)  # before output_dir is set below
    accelerator = build_accelerator(cfg, run_dir)
    run = RunDir(run_dir, cfg.trainer, accelerator.is_main_process)
    try:
        run.claim()  # the lock, and the checks on what the directory holds; writes nothing else
        accelerator.wait_for_everyone()
        setup_logging(accelerator.is_main_process)
        run.hold_log()
        with open_dict(cfg):
            cfg.output_dir = str(run_dir)
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        log.info("llmtune %s: task=%s model=%s -> %s", cfg.command, cfg.task.name, cfg.model.name_or_path or cfg.model.config.model_type, run_dir)
        # Peak memory from here (model, data, optimizer, activations) to the end of training,
        # this process: CUDA's max allocated on a GPU, the growth of the peak RSS on the CPU.
        with MemoryProbe(accelerator.device.type == "cuda", interval_s=0.01) as memory:
            trainer, method = build_trainer(cfg, accelerator, run_dir, extension)
            trainable, total = count_parameters(trainer.model)  # before fit() wraps it (FSDP shards it)
            # The directory is written once fit() has passed the resume checks, just before training.
            trainer.callbacks.insert(0, _Commit(run, config_yaml, hydra_files))
            result = fit(trainer)
        extra = {"params": {"trainable": trainable, "total": total}, "memory": memory.result}
        _finish(trainer, method, result, cfg, run_dir, extra)
    finally:
        for tracker in accelerator.trackers:  # Accelerator.end_training's first half; its second,
            tracker.finish()                  # the process group's end, waits for the last run
        if extension is None or not extension.keeps_processes:
            end_processes()
        run.release()
    validation = result.metrics.get("validation") or {}
    return validation.get(trainer.task.main_metric)


class _Commit(Callback):
    """Commits the run directory at the start of training (after the resume checks)."""

    def __init__(self, run: RunDir, config_yaml: str, hydra_files: dict[str, str]) -> None:
        self.run, self.config_yaml, self.hydra_files = run, config_yaml, hydra_files

    def on_train_start(self, state, total_steps):
        self.run.commit(self.config_yaml, self.hydra_files, state.step)


def _finish(trainer, method, result, cfg, run_dir: Path, extra: dict) -> None:
    from llmtune.engine.distributed import full_weights
    from llmtune.modelcard import write_card

    # Sharded weights (FSDP, ZeRO-3) are gathered by every process, onto the main one.
    weights = full_weights(trainer.model, trainer.accelerator)
    if trainer.accelerator.is_main_process:
        _write_final(trainer, method, cfg, run_dir / "final", weights)
        _write_metrics(trainer, result, cfg, run_dir, extra)
        write_card(trainer, method, cfg, run_dir)  # final/README.md: needs metrics.json and plots/
    trainer.accelerator.wait_for_everyone()


def _write_final(trainer, method, cfg, final: Path, weights: dict | None = None) -> None:
    final.mkdir(parents=True, exist_ok=True)
    method.save(trainer.model, final, state_dict=weights)
    trainer.tokenizer.save_pretrained(final)
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if method.is_adapter:
        # The base model's config, with the task's label maps, so the folder is self-describing
        # and a base loaded with it (README) keeps the label names.
        base.config.save_pretrained(final)
    task = trainer.task
    info = {
        "task": task.name,
        "auto_class": task.auto_class,
        **task.state(),   # what the task needs to be used again (label names)
        "peft": method.method,
        "base_model": cfg.model.name_or_path,
        # What was loaded: an absolute local folder (for a hub id with a packaged copy, that copy),
        # which plain transformers and peft load offline; adapter_config.json records the same.
        "base_model_path": getattr(base, "name_or_path", None) or None,
        "main_metric": task.main_metric,
        # How to rebuild the task and the PEFT method: final/ is usable on its own (llmtune.trained).
        "task_config": OmegaConf.to_container(cfg.task, resolve=True),
        "peft_config": OmegaConf.to_container(cfg.peft, resolve=True),
        # A model built from scratch is rebuilt from these (an adapter's base is not saved).
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "seed": cfg.seed,
    }
    (final / "llmtune.json").write_text(json.dumps(info, indent=1))
    log.info("saved %s to %s", "adapter" if method.is_adapter else "model", final)


def _write_metrics(trainer, result, cfg, run_dir: Path, extra: dict) -> None:
    """metrics.json; `extra`: what run_job measured around fit() (parameter counts, peak memory)."""
    from llmtune.ui.console import metrics_table, print_table

    task, state = trainer.task, result.state
    metrics = {
        "task": task.name,
        "main_metric": task.main_metric,
        "greater_is_better": task.greater_is_better,
        **result.metrics,
        "best": {"step": state.best_step, task.main_metric: state.best_metric},
        "train": {"steps": state.step, "loss": result.train_loss, "runtime_s": round(result.runtime_s, 2), **_throughput(result)},
        **extra,
    }
    if result.initial is not None:
        metrics["initial_validation"] = result.initial
    if result.weights is not None:  # final vs best checkpoint: both scores, which shipped and why
        metrics["weights"] = result.weights
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    for cb in trainer.callbacks:  # trackers log the final metrics too
        cb.on_metrics(metrics)
    shown = {k: v for k, v in result.metrics.items() if v}
    if result.initial is not None:
        shown = {"step 0": result.initial, **shown}
    print_table(metrics_table(f"{cfg.command} {task.name}", shown, task.main_metric))
    print(f"outputs: {run_dir}")


def _throughput(result) -> dict:
    """The training loop's time without its evaluations (checkpoint writes stay in: they are
    part of a method's cost) and the non-pad tokens trained per second of it."""
    per_s = result.tokens / result.train_s if result.train_s > 0 else None
    return {"train_s": round(result.train_s, 2), "tokens": result.tokens, "tokens_per_s": None if per_s is None else round(per_s, 1)}


def end_processes() -> None:
    """Ends the process group of a multi-process launch, once its last run is done."""
    import torch.distributed as dist

    # Without this, torchrun reports SIGABRT at exit although the work finished.
    if dist.is_available() and dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.destroy_process_group()
