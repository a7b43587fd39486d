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
- SIGTERM/SIGINT finish the step, write a checkpoint and exit 143/130; during an evaluation
  they end it between batches and stop the same way. Out-of-memory and non-finite values exit 3
  with a hint; neither writes a checkpoint of a broken state.
- final/ and the test split use the final weights unless trainer.load_best asks for the best
  checkpoint and it beats them by more than the validation metric's noise (_choose_weights).
"""

from __future__ import annotations

import logging
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch
from torch.utils.data import DataLoader, Dataset

from llmtune.engine import checkpoint, predictions, weights
from llmtune.engine.batching import FixedBatches, bucketed
from llmtune.engine.callbacks import Callback, EarlyStopping
from llmtune.engine.checkpoint import TrainState
from llmtune.engine.finite import FiniteGuard
from llmtune.engine.loss import count_targets
from llmtune.engine.signals import TRAINING_PLAN, EvaluationStopped, StopBetweenBatches, StopRequest
from llmtune.errors import Interrupted, TrainingError, UserError
from llmtune.tasks.base import EvalContext

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
    raw: object                       # the same splits as raw rows (what evaluation contexts show tasks)
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
    weights: dict | None = None       # final vs best checkpoint: both validation scores, which shipped, why
    train_s: float = 0.0              # seconds in the training loop, its evaluations left out (checkpoint writes kept)
    tokens: int = 0                   # non-pad tokens trained in this fit() call, all processes


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
    """Tensors to the device; metadata (the Task contract: anything else) stays as it is."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _is_better(value: float, best: float | None, greater: bool) -> bool:
    return best is None or (value > best if greater else value < best)


def eval_loader(task, tokenizer, data, tcfg, accelerator) -> tuple[DataLoader, list[int]]:
    """A length-sorted (less padding) loader over a tokenized split, sharded by accelerate, and
    the order in which it yields the examples (indices into `data`, one process). Training and
    the `evaluate` verb share it, so both score a split the same way."""
    lengths = [len(ids) for ids in data["input_ids"]]
    order = sorted(range(len(data)), key=lambda i: -lengths[i])
    size = tcfg.eval_batch_size
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    collate = bucketed(task.collator(tokenizer, train=False), tcfg, tokenizer)
    loader = DataLoader(data, batch_sampler=FixedBatches(batches, size), collate_fn=collate)
    return accelerator.prepare_data_loader(loader), order


def eval_context(task, tokenizer, raw_split, order: list[int], accelerator) -> EvalContext:
    """What a task's evaluate gets besides the model and loader (the Task contract)."""
    return EvalContext(accelerator=accelerator, tokenizer=tokenizer, raw=raw_split, order=order)


def fit(trainer: Trainer) -> FitResult:
    return _Fit(trainer).run()


def time_steps(trainer: Trainer, steps: int, warmup: int = 1) -> list[float]:
    """Seconds of each of the first optimizer steps of epoch 0, taken exactly as fit() takes
    them (collation, forward, backward, clipping, update), the `warmup` ones left out: the
    measurement behind `llmtune inspect`'s time estimate. Changes the weights; writes nothing."""
    run = _Fit(trainer)
    run.model.train()
    accum = trainer.tcfg.grad_accum
    micro = trainer.plan.micro_batches(0, run.acc.process_index)
    collate = bucketed(trainer.task.train_collator(trainer.tokenizer), trainer.tcfg, trainer.tokenizer)
    source = _StepBatches(trainer.datasets["train"], micro, collate, trainer.seed, 0)
    times = []
    for step in range(min(warmup + steps, len(micro) // accum)):
        started = time.perf_counter()
        run._optimizer_step([source[step * accum + k] for k in range(accum)])
        if run.acc.device.type == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously: wait for the step to finish
        times.append(time.perf_counter() - started)
    return times[warmup:] or times


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
        self.saved_step: int | None = None  # the step whose checkpoint is on disk (written or resumed from)
        self.weights: dict | None = None
        self.stop = StopRequest()
        self.train_loss: float | None = None
        self.grad_norm = None
        self.eval_s = 0.0
        self.finite = FiniteGuard(self.acc, self.optimizer, self.t.skip_nonfinite, trainer.run_dir / "checkpoints")
        device = self.acc.device
        self.window = {"loss": torch.zeros((), device=device), "targets": 0, "tokens": 0, "t0": time.perf_counter()}

    # ------------------------------------------------------------------ the loop
    def run(self) -> FitResult:
        with self.stop:  # from the first evaluation to the last: a signal never kills the run mid-way
            result = self._run()
        if self.stop.signum:  # it came after the last point that checks for it
            log.warning("%s arrived when the run had finished its work; writing its outputs instead of stopping", signal.Signals(self.stop.signum).name)
        return result

    def _run(self) -> FitResult:
        trainer, state, t = self.trainer, self.state, self.t
        if trainer.resume_from is not None:
            # Settings first: a changed task or batch size is named, not reported as a weight mismatch.
            _check_fingerprint(checkpoint.read_state(trainer.resume_from).fingerprint, trainer.fingerprint, trainer.resume_from, t.resume_allow_changes)
            self.state = state = checkpoint.load(trainer.resume_from, self.model, self.optimizer, self.scheduler, self.acc)
            state.fingerprint = trainer.fingerprint
            self.saved_step = state.step
            log.info("resumed from %s at step %d (epoch %d)", trainer.resume_from, state.step, state.epoch)
        started = time.perf_counter()
        self.window["start"] = started
        tokens_before = state.tokens_seen  # a resumed run counts only what it trains itself
        for cb in trainer.callbacks:
            cb.on_setup(trainer)
            cb.on_train_start(state, trainer.total_steps)
        initial = None
        has_validation = "validation" in trainer.datasets
        if t.eval_at_start and state.step == 0 and has_validation:
            initial = self.evaluate("validation")
            self._on_eval(initial, record_best=False)

        self.model.train()
        while state.step < trainer.total_steps and not self._early_stopped():
            if not self._run_epoch():
                state.epoch, state.micro_in_epoch = state.epoch + 1, 0
        train_s = time.perf_counter() - started - self.eval_s

        metrics = {}
        if has_validation:
            if self.last_eval_step != state.step:  # stopped between evaluations, or resumed at the end
                self.last_metrics = self.evaluate("validation")
                self._on_eval(self.last_metrics, record_best=True)
            metrics["validation"] = self._choose_weights()
        if "test" in trainer.datasets:
            metrics["test"] = self.evaluate("test")
        for cb in trainer.callbacks:
            cb.on_train_end(state)
        trainer.model = self.acc.unwrap_model(self.model)
        tokens = self._sum_across(state.tokens_seen - tokens_before)
        return FitResult(state, metrics, initial, self.train_loss, time.perf_counter() - started, self.weights, train_s, tokens)

    def _early_stopped(self) -> bool:
        return bool(self.stopper and self.stopper.should_stop)

    def _run_epoch(self) -> bool:
        """Train through the rest of the current epoch; False once the epoch is used up."""
        trainer, state, t = self.trainer, self.state, self.t
        micro = trainer.plan.micro_batches(state.epoch, self.acc.process_index)
        remaining_steps = (len(micro) - state.micro_in_epoch) // t.grad_accum
        if remaining_steps <= 0:
            return False
        collate = bucketed(self.task.train_collator(trainer.tokenizer), t, trainer.tokenizer)
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
            if self._optimizer_step(step_batches) and self._after_step():
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
                loss_sum = self.task.training_loss(self.model, batch, labels)
                acc.backward(loss_sum * scale)
            loss_total += loss_sum.detach()
        self.step_loss = loss_total
        return local, tokens

    def _rank(self) -> str:
        return f" (rank {self.acc.process_index})" if self.acc.num_processes > 1 else ""

    def _sum_across(self, count: int) -> int:
        """`count` summed over the processes (a collective: every process calls it)."""
        if self.acc.num_processes == 1:
            return count
        return int(self.acc.reduce(torch.tensor(float(count), device=self.acc.device), reduction="sum"))

    def _after_step(self) -> bool:
        """Log, evaluate, save, and decide whether to stop. True ends the epoch loop."""
        trainer, state, t = self.trainer, self.state, self.t
        for cb in trainer.callbacks:
            cb.on_step(state)
        is_last = state.step >= trainer.total_steps
        at_log = state.step % t.log_every == 0 or is_last
        at_eval = "validation" in trainer.datasets and ((t.eval_every and state.step % t.eval_every == 0) or is_last)
        at_save = bool(t.save_every and state.step % t.save_every == 0)
        if at_log or at_eval or at_save or self.stop.signum:
            self.finite.read(state.step)  # the device-side check, before anything is logged or saved
        if at_log:
            self.train_loss = self._log()
        if at_eval:
            self.last_metrics = self.evaluate("validation")  # a signal ends it and the run (_stop)
            self.last_eval_step = state.step
            self._on_eval(self.last_metrics, record_best=True)
        if at_eval or at_save:
            self._save()
        signum = self._stop_signal(at_log)
        if signum:
            self._stop(signum)
        return is_last or self._early_stopped()

    def _stop_signal(self, at_log: bool) -> int:
        """The signal to stop for. Alone, checked every step; with several processes, agreed
        at log steps (every process must stop at the same step to save together)."""
        return self._agreed_signal() if self.acc.num_processes == 1 or at_log else 0

    def _agreed_signal(self) -> int:
        """The stop signal, if any. With several processes, the one any of them got: a
        collective, so every process must ask at the same point (a log step, an eval batch)."""
        if self.acc.num_processes == 1:
            return self.stop.signum or 0
        return int(_max_across(torch.tensor(float(self.stop.signum or 0), device=self.acc.device)))

    def _stop(self, signum: int, during: str = "") -> NoReturn:
        """Stop for a signal: checkpoint the last completed step unless it is on disk already
        (or nothing is trained yet), then raise Interrupted saying which it was."""
        state = self.state
        path = self._step_dir(state.step)
        if state.step == 0:
            done = "nothing was trained yet, so no checkpoint was written. Start again with the same command (trainer.resume=auto also works)."
        else:
            if self.saved_step != state.step:
                self.stop.plan = f"writing the checkpoint of step {state.step}"
                self._save()
            done = f"checkpoint written to {path}. Continue with trainer.resume=auto (same output_dir)."
        raise Interrupted(f"stopped by signal at step {state.step}{during}; {done}", signum)

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
        """The task's metrics over a split. A stop signal ends the evaluation before its next
        batch and stops the run as one during training does (_stop): a long evaluation must
        not hold a scheduler's SIGTERM until its grace period runs out."""
        trainer = self.trainer
        if split not in self.loaders:
            loader, order = eval_loader(self.task, trainer.tokenizer, trainer.datasets[split], self.t, self.acc)
            raw = trainer.raw[split] if trainer.raw is not None and split in trainer.raw else None
            self.loaders[split] = loader, eval_context(self.task, trainer.tokenizer, raw, order, self.acc)
        loader, ctx = self.loaders[split]
        started = time.perf_counter()
        self.stop.plan = self._eval_plan()
        try:
            metrics = self.task.evaluate(self.model, StopBetweenBatches(loader, self._agreed_signal), ctx)
        except EvaluationStopped as stopped:
            self._stop(stopped.signum, f", in the {split} evaluation after {stopped.batches_done} of {stopped.batches} batches")
        self.stop.plan = TRAINING_PLAN
        # What the task generated (EvalContext.report_predictions): the latest evaluation's, per split.
        predictions.hand_over(ctx, split, trainer.run_dir / "predictions" / f"{split}.jsonl", self.acc.is_main_process)
        self.eval_s += time.perf_counter() - started
        return metrics

    def _eval_plan(self) -> str:
        """What a signal during an evaluation makes the run do (_stop), as its log line says."""
        step = self.state.step
        if step == 0:
            then = "then stopping (nothing trained yet, so no checkpoint)"
        elif self.saved_step == step:
            then = f"then stopping (step {step} is checkpointed already)"
        else:
            then = f"writing a checkpoint of step {step}, then stopping"
        return f"ending the evaluation before its next batch, {then}"

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
        self.saved_step = self.state.step

    def _choose_weights(self) -> dict:
        """The final weights or the best checkpoint for final/ and the test split (the rule:
        engine/weights.py); loads the best one when it ships, logs both candidates, and keeps
        the decision for metrics.json. Returns the validation metrics of the weights that ship."""
        state, main, final = self.state, self.task.main_metric, self.last_metrics
        self.weights = choice = weights.choose(
            self.t, self.task, state, final, len(self.trainer.datasets["validation"]),
            loadable=lambda step: checkpoint.is_loadable(self._step_dir(step)),
        )
        best = choice["best"]
        if choice["reason"] == "the best checkpoint is missing or incomplete":
            log.warning("the best checkpoint %s is missing or incomplete; keeping the final weights", self._step_dir(best["step"]))
        ship_best = choice["shipped"] == "best"
        if ship_best:
            if self.saved_step != state.step:  # keep the final state on disk before replacing it
                self._save()
            checkpoint.load_weights(self._step_dir(best["step"]), self.model, self.acc)  # sharded under FSDP: every process loads its part
            log.info("loaded the best checkpoint (step %d, %s %.4f) for final/ and test", best["step"], main, best[main])
        log.info(
            "validation %s: final weights (step %d) %.4f, best checkpoint (step %d) %.4f; margin %.4f (%s). Shipping the %s: %s.",
            main, state.step, final[main], best["step"], best[main], choice["margin"], choice["margin_from"],
            f"best checkpoint (step {best['step']})" if ship_best else "final weights", choice["reason"],
        )
        return self.evaluate("validation") if ship_best else final

    def _step_dir(self, step: int) -> Path:
        return self.trainer.run_dir / "checkpoints" / f"step-{step}"


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
