"""The finite check: a step whose loss or gradient norm is NaN/inf never updates the weights.

Two ways to check, chosen once per run (`FiniteGuard.deferred`):

- On the host (CPU, and GPUs without a fused optimizer): both values are read every step, and
  a bad step is skipped before the optimizer runs (within trainer.skip_nonfinite) or stops the
  run. On CPU the read costs nothing.
- On the device (a GPU with fused AdamW): a read every step would stall the launch queue, so
  nothing is read. The fused kernel skips the update itself when told a value is not finite
  (`found_inf`, the mechanism the AMP grad scaler uses), the guard counts bad steps on the
  device, and the loop calls `read()` at its next log, evaluation, save or signal. The bad step
  still counts as a step (its batch is used up); its loss leaves the logged average.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from llmtune.engine import checkpoint
from llmtune.errors import TrainingError

log = logging.getLogger("llmtune")

HINT = "Lower optimizer.lr, keep trainer.max_grad_norm set, prefer bf16 to fp16, or allow a few bad batches with trainer.skip_nonfinite=N."


def defer_check(accelerator, optimizer) -> bool:
    """Keep the check on the device where a per-step read costs: a GPU, with an optimizer whose
    fused kernel honours found_inf. fp16 has its own grad scaler doing the same; DeepSpeed
    steps inside backward, before any check could run."""
    from accelerate.utils import DistributedType

    inner = getattr(optimizer, "optimizer", optimizer)  # inside accelerate's wrapper
    fused = bool(getattr(inner, "defaults", {}).get("fused"))
    return (accelerator.device.type == "cuda" and fused and accelerator.mixed_precision != "fp16"
            and accelerator.distributed_type != DistributedType.DEEPSPEED)


class FiniteGuard:
    def __init__(self, accelerator, optimizer, allowed: int, checkpoints: Path) -> None:
        self.acc, self.optimizer, self.allowed, self.checkpoints = accelerator, optimizer, allowed, checkpoints
        self.deferred = defer_check(accelerator, optimizer)
        self.skipped = 0                                    # bad steps seen by the host so far
        device = accelerator.device
        self.bad_count = torch.zeros((), device=device)     # device side: bad steps so far
        self.bad_first = torch.zeros((), device=device)     # device side: the first bad step
        self.step_bad = torch.zeros((), dtype=torch.bool, device=device)

    def check(self, step: int, loss: torch.Tensor, grad_norm) -> tuple[bool, torch.Tensor]:
        """(may the optimizer step, the loss to log) for `step` (1-based, not yet taken)."""
        return self._flag(step, loss, grad_norm) if self.deferred else self._check(step, loss, grad_norm)

    def targets(self, count: int):
        """The step's labelled positions for the logged average (none for a device-skipped step)."""
        return torch.where(self.step_bad, 0, count) if self.deferred else count

    def _check(self, step: int, loss: torch.Tensor, grad_norm) -> tuple[bool, torch.Tensor]:
        values = [loss]
        # fp16: an infinite gradient is the grad scaler's business (it skips and lowers the
        # scale). DeepSpeed has stepped already and reports its norm as a float, or None.
        if self.acc.mixed_precision != "fp16" and isinstance(grad_norm, torch.Tensor):
            values.append(grad_norm)
        if bool(torch.isfinite(torch.stack([v.float().reshape(()) for v in values])).all()):
            return True, loss
        self.skipped += 1
        norm = f"{float(grad_norm):.4g}" if grad_norm is not None else "n/a"
        what = f"loss {float(loss):.4g}, gradient norm {norm}"
        if self.skipped <= self.allowed:
            log.warning("step %d%s: non-finite values (%s); batch skipped (%d of %d allowed by trainer.skip_nonfinite)",
                        step, self._rank(), what, self.skipped, self.allowed)
            return False, loss
        self._fail(f"step {step}{self._rank()}: non-finite values ({what}); stopped before the optimizer step, no checkpoint of this state was written")

    def _flag(self, step: int, loss: torch.Tensor, grad_norm) -> tuple[bool, torch.Tensor]:
        bad = ~torch.isfinite(torch.stack([loss.float().reshape(()), grad_norm.float().reshape(())])).all()
        # The torch optimizer inside accelerate's wrapper: its fused kernel reads found_inf.
        getattr(self.optimizer, "optimizer", self.optimizer).found_inf = bad.float()
        self.step_bad = bad
        self.bad_first = torch.where((self.bad_count == 0) & bad, torch.full_like(self.bad_first, step), self.bad_first)
        self.bad_count += bad
        return True, torch.where(bad, torch.zeros_like(loss), loss)

    def read(self, step: int) -> None:
        """The host side of the device check (nothing to do on the host path): warn about
        updates skipped since the last read, stop once more than trainer.skip_nonfinite were."""
        if not self.deferred:
            return
        count, first = (int(v) for v in torch.stack([self.bad_count, self.bad_first]).tolist())
        if count == self.skipped:
            return
        new, self.skipped = count - self.skipped, count
        if count <= self.allowed:
            log.warning("%d update(s) with non-finite values skipped on the device by step %d%s (%d of %d allowed by trainer.skip_nonfinite)",
                        new, step, self._rank(), count, self.allowed)
            return
        self._fail(f"step {first}{self._rank()}: non-finite values (loss or gradient norm); its update was not applied, "
                   f"and the run stopped at step {step} without writing a checkpoint of it")

    def _fail(self, what: str):
        previous = checkpoint.latest_checkpoint(self.checkpoints)
        raise TrainingError(f"{what} (last good: {previous or 'none'}). {HINT}")

    def _rank(self) -> str:
        return f" (rank {self.acc.process_index})" if self.acc.num_processes > 1 else ""
