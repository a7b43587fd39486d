"""One training run from a composed config: validate, build, fit, write the outputs.

Outputs (a contract):
    config.yaml        the resolved config
    train_log.jsonl    one JSON object per log step and per evaluation
    metrics.json       final validation/test metrics, the main metric named
    checkpoints/step-N resumable state (atomic)
    final/             save_pretrained model or PEFT adapter + tokenizer + label maps
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from llmtune.errors import UserError

log = logging.getLogger("llmtune")
RUN_MARKERS = ("config.yaml", "metrics.json", "train_log.jsonl", "checkpoints")


def run_dir_of(cfg: DictConfig) -> Path:
    """Hydra's job directory when Hydra runs the job (a sweep job gets its own), else output_dir."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path(str(cfg.output_dir)).expanduser().resolve()


def check_run_dir(run_dir: Path, tcfg) -> None:
    """Refuse to mix two runs in one directory: a fresh run needs an empty one, unless it
    resumes the run there or the user asked to replace it."""
    if tcfg.resume is not None:
        return
    found = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if not found:
        return
    if not tcfg.overwrite_output_dir:
        raise UserError(
            f"output_dir {run_dir} already holds a run ({', '.join(found)}); pick a new output_dir, "
            "continue it with trainer.resume=auto, or replace it with trainer.overwrite_output_dir=true."
        )
    log.warning("replacing the run in %s (trainer.overwrite_output_dir=true)", run_dir)
    for name in (*RUN_MARKERS, "final", "run.log"):
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def run_job(cfg: DictConfig) -> float | None:
    from llmtune.builders import build_accelerator, build_trainer
    from llmtune.config import validate
    from llmtune.engine.distributed import full_weights
    from llmtune.engine.loop import fit
    from llmtune.ui.console import setup_logging

    validate(cfg)
    run_dir = run_dir_of(cfg)
    accelerator = build_accelerator(cfg)
    if accelerator.is_main_process:
        check_run_dir(run_dir, cfg.trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    setup_logging(accelerator.is_main_process, run_dir / "run.log")
    with open_dict(cfg):
        cfg.output_dir = str(run_dir)
    if accelerator.is_main_process:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    log.info("llmtune %s: task=%s model=%s -> %s", cfg.command, cfg.task.name, cfg.model.name_or_path or cfg.model.config.model_type, run_dir)

    try:
        trainer, method = build_trainer(cfg, accelerator, run_dir)
        result = fit(trainer)
        # Sharded weights (FSDP, ZeRO-3) are gathered by every process, onto the main one.
        weights = full_weights(trainer.model, accelerator)
        if accelerator.is_main_process:
            _write_final(trainer, method, cfg, run_dir / "final", weights)
            _write_metrics(trainer, result, cfg, run_dir)
        accelerator.wait_for_everyone()
    finally:
        _shutdown(accelerator)
    validation = result.metrics.get("validation") or {}
    return validation.get(trainer.task.main_metric)


def _write_final(trainer, method, cfg, final: Path, weights: dict | None = None) -> None:
    final.mkdir(parents=True, exist_ok=True)
    method.save(trainer.model, final, state_dict=weights)
    trainer.tokenizer.save_pretrained(final)
    if method.is_adapter:
        # The base model's config, with the task's label maps, so the folder is self-describing.
        base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        base.config.save_pretrained(final)
    task = trainer.task
    info = {
        "task": task.name,
        "auto_class": task.auto_class,
        "labels": getattr(task, "labels", None) or None,
        "peft": method.method,
        "base_model": cfg.model.name_or_path,
        "main_metric": task.main_metric,
    }
    (final / "llmtune.json").write_text(json.dumps(info, indent=1))
    log.info("saved %s to %s", "adapter" if method.is_adapter else "model", final)


def _write_metrics(trainer, result, cfg, run_dir: Path) -> None:
    from llmtune.ui.console import metrics_table, print_table

    task, state = trainer.task, result.state
    metrics = {
        "task": task.name,
        "main_metric": task.main_metric,
        "greater_is_better": task.greater_is_better,
        **result.metrics,
        "best": {"step": state.best_step, task.main_metric: state.best_metric},
        "train": {"steps": state.step, "loss": result.train_loss, "runtime_s": round(result.runtime_s, 2)},
    }
    if result.initial is not None:
        metrics["initial_validation"] = result.initial
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    shown = {k: v for k, v in result.metrics.items() if v}
    if result.initial is not None:
        shown = {"step 0": result.initial, **shown}
    print_table(metrics_table(f"{cfg.command} {task.name}", shown, task.main_metric))
    print(f"outputs: {run_dir}")


def _shutdown(accelerator) -> None:
    accelerator.end_training()
    import torch.distributed as dist

    # Without this, torchrun reports SIGABRT at exit although the work finished.
    if dist.is_available() and dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.destroy_process_group()
