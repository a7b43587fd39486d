"""The only place that turns config into objects (hydra.utils.instantiate for `_target_`s)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate

from llmtune.errors import UserError

log = logging.getLogger("llmtune")


def _instantiate(node, group: str, **kwargs):
    try:
        return instantiate(node, **kwargs)
    except Exception as exc:  # noqa: BLE001 — instantiate wraps errors in several types
        cause = exc.__cause__ or exc
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"{group}: cannot build {node.get('_target_')}: {str(cause).strip().splitlines()[0]}; check the {group}.* keys.") from None


def build_accelerator(cfg):
    import torch
    from accelerate import Accelerator

    t = cfg.trainer
    # Accelerator(cpu=True) also makes `torchrun`/`accelerate launch` on a GPU-less machine
    # run multi-process on gloo.
    return Accelerator(cpu=t.cpu or not torch.cuda.is_available(), mixed_precision=t.precision)


def build_task(cfg):
    return _instantiate(cfg.task, "task")


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices; not biases or normalisation weights (1-D), as is standard for AdamW."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def total_steps(tcfg, steps_per_epoch: int) -> int:
    """max_steps when set (it overrides max_epochs, as in HF Trainer), else whole epochs."""
    return tcfg.max_steps or tcfg.max_epochs * steps_per_epoch


def build_trainer(cfg, accelerator, run_dir: Path):
    """Data, tokenizer, model, PEFT, optimizer, scheduler and callbacks for one run."""
    from accelerate.utils import set_seed

    from llmtune.data.load import load_raw, tokenize
    from llmtune.engine import checkpoint
    from llmtune.engine.batching import BatchPlan
    from llmtune.engine.callbacks import EarlyStopping, JsonlLogger, ProgressCallback
    from llmtune.engine.loop import Trainer
    from llmtune.models import load_model, load_tokenizer
    from llmtune.peft.heads import count_parameters

    t = cfg.trainer
    set_seed(cfg.seed)
    task = build_task(cfg)
    raw, fingerprint = load_raw(cfg.data, task, cfg.seed)
    resume_from = checkpoint.resolve_resume(t.resume, run_dir)
    tokenizer = load_tokenizer(cfg.model, task, task.texts(raw["train"]))
    model_kwargs = task.model_kwargs(raw)
    data = tokenize(raw, task, tokenizer, cfg.data, fingerprint, accelerator)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.items())
    log.info("data: %s (%s)", sizes, raw["train"].info.description)

    set_seed(cfg.seed)  # the same initial weights whatever the data loading consumed
    model = load_model(cfg.model, task, tokenizer, model_kwargs)
    method = _instantiate(cfg.peft, "peft")
    model = method.apply(model, task)
    trainable, total = count_parameters(model)
    log.info("parameters: %s trainable of %s total (%.2f%%, peft=%s)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1), method.method)

    lengths = [len(ids) for ids in data["train"]["input_ids"]]
    plan = BatchPlan(lengths, t.batch_size, t.grad_accum, accelerator.num_processes, cfg.seed, t.group_by_length)
    plan.check()
    steps = total_steps(t, plan.steps_per_epoch)
    lr = cfg.optimizer.lr if cfg.optimizer.lr is not None else method.default_lr
    optimizer = _instantiate(cfg.optimizer, "optimizer", lr=lr)(param_groups(model, cfg.optimizer.get("weight_decay", 0.0)))
    scheduler = _instantiate(cfg.scheduler, "scheduler")(optimizer, num_training_steps=steps)
    log.info(
        "training: %d steps of %d examples (batch %d × accum %d × %d process(es)), %.1f epochs, lr %g",
        steps, plan.step_size, t.batch_size, t.grad_accum, accelerator.num_processes, steps / plan.steps_per_epoch, lr,
    )
    callbacks = [JsonlLogger(run_dir / "train_log.jsonl", enabled=accelerator.is_main_process), ProgressCallback(enabled=accelerator.is_main_process), EarlyStopping(t.early_stopping_patience)]
    trainer = Trainer(
        accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, task=task, tokenizer=tokenizer,
        datasets=data, plan=plan, total_steps=steps, run_dir=run_dir, tcfg=t, seed=cfg.seed, callbacks=callbacks,
        resume_from=resume_from,
        fingerprint={"task": task.name, "peft": method.method, "step_size": plan.step_size, "max_length": task.max_length},
    )
    return trainer, method
