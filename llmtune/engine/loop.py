"""fit(): a step-based training loop on HF Accelerate, readable in one sitting.

Order follows accelerate's examples: the Accelerator and seed come first (builders), then data,
model, optimizer and scheduler; `prepare`; the loop; evaluation with gather_for_metrics; save.
`state.step` counts optimizer steps.

- Exact accumulation: a step's loss is summed over every labelled position of its micro-batches
  and divided by their total count (across processes too), so any split of the same step batch
  into micro-batches and processes gives the same update.
- Losses are summed on the device and read once per log step. The finite check (engine/finite.py)
  keeps a NaN/inf step from updating the weights: read every step on CPU, left on the device and
  read at the next log, evaluation or save on a GPU with fused AdamW.
- SIGTERM/SIGINT finish the step, write a checkpoint and exit 143/130; out-of-memory and
  non-finite values exit 3 with a hint; neither writes a checkpoint of a broken state.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from llmtune.engine import checkpoint
from llmtune.engine.batching import FixedBatches, bucketed
from llmtune.engine.callbacks import Callback, EarlyStopping
from llmtune.engine.checkpoint import TrainState
from llmtune.engine.finite import FiniteGuard
from llmtune.engine.loss import count_targets, cross_entropy_sum
from llmtune.engine.signals import StopRequest
from llmtune.errors import Interrupted, TrainingError, UserError
from llmtune.tasks.common import model_logits

log = logging.getLogger("llmtune")

OOM_HINT = "lower trainer.batch_size (and raise trainer.grad_accum to keep the step size), shorten task.max_length, use trainer.precision=bf16, or peft=lora"


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
    plan: object                      # BatchPlan or TokenBudgetPlan (llmtune.engine.batching)
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
        features = [dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)]
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
    collate = bucketed(trainer.task.collator(trainer.tokenizer, train=False), trainer.tcfg, trainer.tokenizer)
    loader = DataLoader(data, batch_sampler=FixedBatches(batches, size), collate_fn=collate)
    return trainer.accelerator.prepare_data_loader(loader)


def fit(trainer: Trainer) -> FitResult:
    return _Fit(trainer).run()


class _Fit:
    """The mutable pieces of one fit() call and the steps that change them."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.acc, self.t, self.task = trainer, trainer.accelerator, trainer.tcfg, trainer.task
        self.model, self.optimizer = self.acc.prepare(trainer.model, trainer.optimizer)
        # Stepped here once per optimizer step: accelerate's wrapper would step it once per
        # process, which would change the schedule with the number of processes.
        self.scheduler = trainer.scheduler
        self.state = TrainState(fingerprint=trainer.fingerprint)
        self.stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
        self.loaders: dict = {}
        self.last_metrics: dict | None = None
        self.last_eval_step = -1
        self.train_loss: float | None = None
        self.grad_norm = None
        self.finite = FiniteGuard(self.acc, self.optimizer, self.t.skip_nonfinite, trainer.run_dir / "checkpoints")
        device = self.acc.device
        self.logits = getattr(trainer.task, "logits", model_logits)
        self.window = {"loss": torch.zeros((), device=device), "targets": 0, "tokens": 0, "t0": time.perf_counter()}

    # ------------------------------------------------------------------ the loop
    def run(self) -> FitResult:
        trainer, state, t = self.trainer, self.state, self.t
        if trainer.resume_from is not None:
            # Settings first: a changed task or batch size is named, not reported as a weight mismatch.
            _check_fingerprint(checkpoint.read_state(trainer.resume_from).fingerprint, trainer.fingerprint, trainer.resume_from, t.resume_allow_changes)
            self.state = state = checkpoint.load(trainer.resume_from, self.model, self.optimizer, self.scheduler, self.acc)
            state.fingerprint = trainer.fingerprint
            log.info("resumed from %s at step %d (epoch %d)", trainer.resume_from, state.step, state.epoch)
        started = time.perf_counter()
        self.window["start"] = started
        for cb in trainer.callbacks:
            cb.on_train_start(state, trainer.total_steps)
        initial = None
        has_validation = "validation" in trainer.datasets
        if t.eval_at_start and state.step == 0 and has_validation:
            initial = self.evaluate("validation")
            self._on_eval(initial, record_best=False)

        self.model.train()
        with StopRequest() as stop:
            while state.step < trainer.total_steps and not self._early_stopped():
                if not self._run_epoch(stop):
                    state.epoch, state.micro_in_epoch = state.epoch + 1, 0

        metrics = {}
        if has_validation:
            if self.last_eval_step != state.step:  # stopped between evaluations, or resumed at the end
                self.last_metrics = self.evaluate("validation")
                self._on_eval(self.last_metrics, record_best=True)
            metrics["validation"] = self._restore_best() or self.last_metrics
        if "test" in trainer.datasets:
            metrics["test"] = self.evaluate("test")
        for cb in trainer.callbacks:
            cb.on_train_end(state)
        trainer.model = self.acc.unwrap_model(self.model)
        return FitResult(state, metrics, initial, self.train_loss, time.perf_counter() - started)

    def _early_stopped(self) -> bool:
        return bool(self.stopper and self.stopper.should_stop)

    def _run_epoch(self, stop: StopRequest) -> bool:
        """Train through the rest of the current epoch; False once the epoch is used up."""
        trainer, state, t = self.trainer, self.state, self.t
        micro = trainer.plan.micro_batches(state.epoch, self.acc.process_index)
        remaining_steps = (len(micro) - state.micro_in_epoch) // t.grad_accum
        if remaining_steps <= 0:
            return False
        collate = bucketed(self.task.collator(trainer.tokenizer, train=True), t, trainer.tokenizer)
        source = _StepBatches(trainer.datasets["train"], micro, collate, trainer.seed, state.epoch)
        loader = DataLoader(
            source, batch_size=None, sampler=range(state.micro_in_epoch, len(micro)),
            num_workers=t.num_workers, pin_memory=self.acc.device.type == "cuda",
            # Its own generator: otherwise starting the iterator draws from the global RNG,
            # and a run resumed mid-epoch would draw there while the uninterrupted one did not.
            generator=torch.Generator().manual_seed(trainer.seed),
        )
        batches = iter(loader)
        for _ in range(remaining_steps):
            step_batches = [next(batches) for _ in range(t.grad_accum)]
            state.micro_in_epoch += t.grad_accum
            if self._optimizer_step(step_batches) and self._after_step(stop):
                return True
        return False

    def _optimizer_step(self, batches: list[dict]) -> bool:
        """One optimizer step over `batches`; False when the batch was skipped (nothing
        labelled, or a non-finite value allowed by trainer.skip_nonfinite)."""
        state, t = self.state, self.t
        try:
            counts = self._forward_backward(batches)
            stepped = counts is not None
            if stepped:
                max_norm = t.max_grad_norm or float("inf")  # inf: measure the norm, clip nothing
                self.grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), max_norm)
                stepped, self.step_loss = self.finite.check(state.step + 1, self.step_loss, self.grad_norm)
        except torch.OutOfMemoryError as exc:
            raise TrainingError(f"out of memory at step {state.step + 1}{self._rank()}: {OOM_HINT}. No checkpoint was written for this step.") from exc
        if stepped:
            self.optimizer.step()
            self.scheduler.step()
            state.step += 1
            targets, tokens = counts
            self.window["loss"] += self.step_loss
            self.window["targets"] += self.finite.targets(targets)
            self.window["tokens"] += tokens
            state.tokens_seen += tokens
        self.optimizer.zero_grad(set_to_none=True)
        return stepped

    def _forward_backward(self, batches: list[dict]) -> tuple[int, int] | None:
        """Forward/backward over one step's micro-batches; returns (labelled positions,
        non-pad tokens), or None when nothing is labelled. The counts are taken on the CPU
        before the transfer, so normalising the loss needs no device read."""
        acc, world = self.acc, self.acc.num_processes
        local = sum(count_targets(b["labels"]) for b in batches)
        tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches)
        if world > 1:
            total = acc.reduce(torch.tensor(float(local), device=acc.device), reduction="sum")
            scale = world / total.clamp(min=1.0)  # DDP averages gradients over processes
        elif local == 0:
            log.warning("step %d: no labelled position in this batch (all labels ignored); skipped, not counted as a zero loss", self.state.step + 1)
            return None
        else:
            scale = 1.0 / local
        loss_total = torch.zeros((), device=acc.device)
        for i, batch in enumerate(batches):
            batch = _to_device(batch, acc.device)
            labels = batch.pop("labels")
            # Gradients are all-reduced once per step, on the last micro-batch.
            with nullcontext() if i == len(batches) - 1 else acc.no_sync(self.model):
                logits, labels = self.logits(self.model, batch, labels)
                loss_sum = cross_entropy_sum(logits, labels)
                acc.backward(loss_sum * scale)
            loss_total += loss_sum.detach()
        self.step_loss = loss_total
        return local, tokens

    def _rank(self) -> str:
        return f" (rank {self.acc.process_index})" if self.acc.num_processes > 1 else ""

    def _after_step(self, stop: StopRequest) -> bool:
        """Log, evaluate, save, and decide whether to stop. True ends the epoch loop."""
        trainer, state, t = self.trainer, self.state, self.t
        for cb in trainer.callbacks:
            cb.on_step(state)
        is_last = state.step >= trainer.total_steps
        at_log = state.step % t.log_every == 0 or is_last
        at_eval = "validation" in trainer.datasets and ((t.eval_every and state.step % t.eval_every == 0) or is_last)
        at_save = bool(t.save_every and state.step % t.save_every == 0)
        if at_log or at_eval or at_save or stop.signum:
            self.finite.read(state.step)  # the device-side check, before anything is logged or saved
        if at_log:
            self.train_loss = self._log()
        saved = False
        if at_eval:
            self.last_metrics = self.evaluate("validation")
            self.last_eval_step = state.step
            self._on_eval(self.last_metrics, record_best=True)
            self._save()
            saved = True
        elif at_save:
            self._save()
            saved = True
        signum = self._stop_signal(stop, at_log)
        if signum:
            if not saved:
                self._save()
            raise Interrupted(
                f"stopped by signal at step {state.step}; checkpoint written to {trainer.run_dir / 'checkpoints' / f'step-{state.step}'}. "
                "Continue with trainer.resume=auto (same output_dir).", signum,
            )
        return is_last or self._early_stopped()

    def _stop_signal(self, stop: StopRequest, at_log: bool) -> int:
        """The signal to stop for. Alone, checked every step; with several processes, agreed
        at log steps (every process must stop at the same step to save together)."""
        if self.acc.num_processes == 1:
            return stop.signum or 0
        if not at_log:
            return 0
        flag = torch.tensor(float(stop.signum or 0), device=self.acc.device)
        return int(_max_across(flag))

    # ------------------------------------------------------------------ logging, eval, save
    def _log(self) -> float:
        """Read the device-side sums once, across processes; write a log record."""
        acc, state, window = self.acc, self.state, self.window
        device = acc.device
        sums = torch.stack([window["loss"], torch.tensor(float(window["targets"]), device=device), torch.tensor(float(window["tokens"]), device=device)])
        if acc.num_processes > 1:
            sums = acc.reduce(sums, reduction="sum")
        loss_sum, targets, tokens = sums.tolist()
        loss = loss_sum / max(targets, 1.0)
        now = time.perf_counter()
        record = {
            "type": "train",
            "step": state.step,
            "total_steps": self.trainer.total_steps,
            "epoch": state.epoch,
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(self.grad_norm) if self.grad_norm is not None else None,
            "tokens_per_s": tokens / max(now - window["t0"], 1e-9),
            "elapsed_s": now - window["start"],
        }
        window.update(loss=torch.zeros((), device=device), targets=0, tokens=0, t0=now)
        for cb in self.trainer.callbacks:
            cb.on_log(state, record)
        return loss

    def evaluate(self, split: str) -> dict[str, float]:
        if split not in self.loaders:
            self.loaders[split] = eval_loader(self.trainer, split)
        return self.task.evaluate(self.model, self.loaders[split], self.acc)

    def _on_eval(self, metrics: dict, record_best: bool) -> None:
        state, task = self.state, self.task
        value = metrics[task.main_metric]
        if record_best:
            if _is_better(value, state.best_metric, task.greater_is_better):
                state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            else:
                state.evals_without_improvement += 1
        record = {"type": "eval", "split": "validation", "step": state.step, **metrics}
        for cb in self.trainer.callbacks:
            cb.on_evaluate(state, record)

    def _save(self) -> None:
        checkpoint.save(
            self.trainer.run_dir / "checkpoints", self.state, self.model, self.optimizer, self.scheduler, self.acc,
            keep=self.t.save_total_limit, protect=self.state.best_step,
        )

    def _restore_best(self) -> dict | None:
        """When an earlier checkpoint scored better than the final weights, load it back so
        final/ and the test metrics use the best model. Returns its validation metrics."""
        state, task = self.state, self.task
        if state.best_step is None or state.best_step == state.step:
            return None
        if not _is_better(state.best_metric, self.last_metrics[task.main_metric], task.greater_is_better):
            return None
        path = self.trainer.run_dir / "checkpoints" / f"step-{state.best_step}"
        if not checkpoint.is_loadable(path):
            return None
        checkpoint.load_weights(path, self.model, self.acc)  # sharded under FSDP: every process loads its part
        log.info("loaded the best checkpoint (step %d, %s %.4f) for final/ and test", state.best_step, task.main_metric, state.best_metric)
        return self.evaluate("validation")


def _max_across(value: torch.Tensor) -> float:
    import torch.distributed as dist

    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


def _check_fingerprint(saved: dict, current: dict, path: Path, allow: bool) -> None:
    changed = [k for k in current if k in saved and saved[k] != current[k]]
    if not changed:
        return
    details = ", ".join(f"{k}: {saved[k]} -> {current[k]}" for k in changed)
    if allow:
        log.warning("resuming %s with changed settings (%s), as trainer.resume_allow_changes permits", path, details)
        return
    raise UserError(
        f"trainer.resume: {path} was written with different settings ({details}); resume with the same settings, "
        "start a new output_dir, or set trainer.resume_allow_changes=true to accept the change."
    )
