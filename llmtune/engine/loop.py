"""fit() and evaluate(): a step-based training loop on HF Accelerate, readable in one sitting.

Order follows accelerate's examples: the Accelerator and seed come first (builders), then data,
model, optimizer and scheduler; `prepare`; the loop; evaluation with gather_for_metrics; save.
`state.step` counts optimizer steps. The loss of a step is summed over every labelled position
of its micro-batches and divided by their total count (across processes too), so any split of
the same step batch gives the same update. Nothing reads a device value back per step: losses
are summed on the device and read once per log step.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from llmtune.engine import checkpoint
from llmtune.engine.batching import BatchPlan
from llmtune.engine.callbacks import Callback, EarlyStopping
from llmtune.engine.checkpoint import TrainState
from llmtune.engine.loss import count_targets, cross_entropy_sum
from llmtune.errors import UserError

log = logging.getLogger("llmtune")


@dataclass
class Trainer:
    """Everything fit() needs, built from the config by llmtune.builders."""

    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    task: object
    tokenizer: object
    datasets: object                  # DatasetDict with train (+ validation, test), tokenized
    plan: BatchPlan
    total_steps: int
    run_dir: Path
    tcfg: object                      # the trainer config group
    seed: int
    callbacks: list[Callback] = field(default_factory=list)
    resume_from: Path | None = None
    fingerprint: dict = field(default_factory=dict)


@dataclass
class FitResult:
    state: TrainState
    metrics: dict                     # {"validation": {...}, "test": {...}}
    initial: dict | None              # validation metrics at step 0, when evaluated
    train_loss: float | None
    runtime_s: float


class _StepBatches(Dataset):
    """Micro-batch k of an epoch, collated with the torch RNG seeded from (seed, epoch, k).

    Random choices in collation (dynamic masking) then depend only on which batch it is, not
    on worker processes or where a resumed run started: resumed runs see the same batches."""

    def __init__(self, data, micro_batches: list[list[int]], collate, seed: int, epoch: int) -> None:
        self.data, self.micro, self.collate, self.seed, self.epoch = data, micro_batches, collate, seed, epoch

    def __len__(self) -> int:
        return len(self.micro)

    def __getitem__(self, k: int) -> dict:
        rows = self.data[self.micro[k]]
        features = [dict(zip(rows, values)) for values in zip(*rows.values())]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + k)
            return self.collate(features)


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _is_better(value: float, best: float | None, greater: bool) -> bool:
    return best is None or (value > best if greater else value < best)


def eval_loader(trainer: Trainer, split: str):
    """A length-sorted (less padding) loader over a split, sharded by accelerate."""
    data = trainer.datasets[split]
    lengths = [len(ids) for ids in data["input_ids"]]
    order = sorted(range(len(data)), key=lambda i: -lengths[i])
    size = trainer.tcfg.eval_batch_size
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    loader = DataLoader(data, batch_sampler=batches, collate_fn=trainer.task.collator(trainer.tokenizer, train=False))
    return trainer.accelerator.prepare_data_loader(loader)


def evaluate(trainer: Trainer, model, split: str, loaders: dict) -> dict[str, float]:
    if split not in loaders:
        loaders[split] = eval_loader(trainer, split)
    return trainer.task.evaluate(model, loaders[split], trainer.accelerator)


def fit(trainer: Trainer) -> FitResult:
    acc, t, task = trainer.accelerator, trainer.tcfg, trainer.task
    model, optimizer = acc.prepare(trainer.model, trainer.optimizer)
    # The scheduler is stepped by us once per optimizer step (accelerate's wrapper would step it
    # once per process, which changes the schedule with the number of processes).
    scheduler = trainer.scheduler
    state = TrainState(fingerprint=trainer.fingerprint)
    if trainer.resume_from is not None:
        state = checkpoint.load(trainer.resume_from, model, optimizer, scheduler, acc)
        _check_fingerprint(state.fingerprint, trainer.fingerprint, trainer.resume_from)
        log.info("resumed from %s at step %d (epoch %d)", trainer.resume_from, state.step, state.epoch)

    callbacks = trainer.callbacks
    stopper = next((c for c in callbacks if isinstance(c, EarlyStopping)), None)
    loaders: dict = {}
    has_validation = "validation" in trainer.datasets
    initial = None
    for cb in callbacks:
        cb.on_train_start(state, trainer.total_steps)
    if t.eval_at_start and state.step == 0 and has_validation:
        initial = evaluate(trainer, model, "validation", loaders)
        _on_eval(trainer, state, initial, callbacks, record_best=False)

    collate = task.collator(trainer.tokenizer, train=True)
    world, rank = acc.num_processes, acc.process_index
    device = acc.device
    started = time.perf_counter()
    window = {"loss": torch.zeros((), device=device), "targets": 0, "tokens": 0, "t0": started}
    last_eval_step, last_metrics, train_loss, grad_norm = -1, None, None, None
    model.train()
    while state.step < trainer.total_steps and not (stopper and stopper.should_stop):
        micro = trainer.plan.micro_batches(state.epoch, rank)
        if state.micro_in_epoch >= len(micro):
            state.epoch, state.micro_in_epoch = state.epoch + 1, 0
            continue
        source = _StepBatches(trainer.datasets["train"], micro, collate, trainer.seed, state.epoch)
        loader = DataLoader(
            source, batch_size=None, sampler=range(state.micro_in_epoch, len(micro)),
            num_workers=t.num_workers, pin_memory=device.type == "cuda",
        )
        batches = iter(loader)
        for _ in range((len(micro) - state.micro_in_epoch) // t.grad_accum):
            step_batches = [next(batches) for _ in range(t.grad_accum)]
            state.micro_in_epoch += t.grad_accum
            loss_sum, targets, tokens = _train_step(acc, model, step_batches, world, state.step)
            if t.max_grad_norm:
                grad_norm = acc.clip_grad_norm_(model.parameters(), t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += tokens
            window["loss"] += loss_sum
            window["targets"] += targets
            window["tokens"] += tokens
            for cb in callbacks:
                cb.on_step(state)

            if state.step % t.log_every == 0 or state.step == trainer.total_steps:
                train_loss = _log(trainer, state, window, scheduler, grad_norm, callbacks)
            is_last = state.step == trainer.total_steps
            if has_validation and ((t.eval_every and state.step % t.eval_every == 0) or is_last):
                last_metrics = evaluate(trainer, model, "validation", loaders)
                last_eval_step = state.step
                _on_eval(trainer, state, last_metrics, callbacks, record_best=True)
                _save(trainer, state, model, optimizer, scheduler)
            elif t.save_every and state.step % t.save_every == 0:
                _save(trainer, state, model, optimizer, scheduler)
            if is_last or (stopper and stopper.should_stop):
                break

    metrics = {}
    if has_validation:
        if last_eval_step != state.step:  # stopped between evaluations (or resumed at the end)
            last_metrics = evaluate(trainer, model, "validation", loaders)
            _on_eval(trainer, state, last_metrics, callbacks, record_best=True)
        metrics["validation"] = last_metrics
        best = _restore_best(trainer, state, model, metrics["validation"])
        if best is not None:
            metrics["validation"] = best
    if "test" in trainer.datasets:
        metrics["test"] = evaluate(trainer, model, "test", loaders)
    for cb in callbacks:
        cb.on_train_end(state)
    trainer.model = acc.unwrap_model(model)
    return FitResult(state, metrics, initial, train_loss, time.perf_counter() - started)


def _train_step(acc, model, batches: list[dict], world: int, step: int):
    """Forward/backward over one step's micro-batches; returns (summed loss on device,
    labelled positions, non-pad input tokens), the counts taken on the CPU before transfer."""
    counts = [count_targets(b["labels"]) for b in batches]
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches)
    local = sum(counts)
    if world > 1:
        total = acc.reduce(torch.tensor(float(local), device=acc.device), reduction="sum")
        scale = world / total.clamp(min=1.0)
    else:
        if local == 0:
            raise UserError(f"step {step + 1}: the batch has no labelled positions (every label is ignored), so there is nothing to learn; check max_length against your examples.")
        scale = 1.0 / local
    loss_total = torch.zeros((), device=acc.device)
    for i, batch in enumerate(batches):
        batch = _to_device(batch, acc.device)
        labels = batch.pop("labels")
        # Gradients are all-reduced once per step, on the last micro-batch.
        with nullcontext() if i == len(batches) - 1 else acc.no_sync(model):
            logits = model(**batch).logits
            loss_sum = cross_entropy_sum(logits, labels)
            acc.backward(loss_sum * scale)
        loss_total += loss_sum.detach()
    return loss_total, local, tokens


def _log(trainer: Trainer, state: TrainState, window: dict, scheduler, grad_norm, callbacks) -> float:
    """Read the device-side sums once, across processes; write a log record."""
    acc = trainer.accelerator
    sums = torch.stack([window["loss"], torch.tensor(float(window["targets"]), device=acc.device), torch.tensor(float(window["tokens"]), device=acc.device)])
    sums = acc.reduce(sums, reduction="sum") if acc.num_processes > 1 else sums
    loss_sum, targets, tokens = sums.tolist()
    loss = loss_sum / max(targets, 1.0)
    now = time.perf_counter()
    if not math.isfinite(loss):
        raise FloatingPointError(f"the training loss became {loss} by step {state.step}; lower optimizer.lr or check the data (no checkpoint of this state is written).")
    record = {
        "type": "train",
        "step": state.step,
        "total_steps": trainer.total_steps,
        "epoch": state.epoch,
        "loss": loss,
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "tokens_per_s": tokens / max(now - window["t0"], 1e-9),
        "elapsed_s": now - window.get("start", window["t0"]),
    }
    window.setdefault("start", window["t0"])
    window.update(loss=torch.zeros((), device=acc.device), targets=0, tokens=0, t0=now)
    if acc.is_main_process:
        for cb in callbacks:
            cb.on_log(state, record)
    return loss


def _on_eval(trainer: Trainer, state: TrainState, metrics: dict, callbacks, record_best: bool) -> None:
    task = trainer.task
    value = metrics[task.main_metric]
    if record_best:
        if _is_better(value, state.best_metric, task.greater_is_better):
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
        else:
            state.evals_without_improvement += 1
    record = {"type": "eval", "split": "validation", "step": state.step, **metrics}
    for cb in callbacks:
        if trainer.accelerator.is_main_process or not hasattr(cb, "path"):
            cb.on_evaluate(state, record)


def _save(trainer: Trainer, state: TrainState, model, optimizer, scheduler) -> None:
    checkpoint.save(
        trainer.run_dir / "checkpoints", state, model, optimizer, scheduler, trainer.accelerator,
        keep=trainer.tcfg.save_total_limit, protect=state.best_step,
    )


def _restore_best(trainer: Trainer, state: TrainState, model, final: dict) -> dict | None:
    """When an earlier checkpoint scored better than the final weights, load it back so final/
    and the test metrics use the best model. Returns its validation metrics, or None."""
    task = trainer.task
    if state.best_step is None or state.best_step == state.step:
        return None
    if not _is_better(state.best_metric, final[task.main_metric], task.greater_is_better):
        return None
    path = trainer.run_dir / "checkpoints" / f"step-{state.best_step}"
    if not checkpoint.is_loadable(path):
        return None
    from safetensors.torch import load_file

    params = dict(trainer.accelerator.unwrap_model(model).named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(path / "trainable.safetensors").items():
            params[name].copy_(tensor)
    log.info("loaded the best checkpoint (step %d, %s %.4f) for final/ and test", state.best_step, task.main_metric, state.best_metric)
    return evaluate(trainer, model, "validation", {})


def _check_fingerprint(saved: dict, current: dict, path: Path) -> None:
    changed = [k for k in current if k in saved and saved[k] != current[k]]
    if changed:
        details = ", ".join(f"{k}: {saved[k]} -> {current[k]}" for k in changed)
        raise UserError(f"trainer.resume: {path} was written with different settings ({details}); resume with the same settings or start a new output_dir.")
