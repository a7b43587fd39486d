"""What the benchmark measures: tokens trained, step times, memory."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections import deque
from collections.abc import Callable


# --------------------------------------------------------------------------- measuring
class TokenMeter:
    """Wraps a collate function and queues (non-pad tokens, all tokens) per collated batch.
    The step clock takes the oldest entries at each optimizer step: loaders that collate
    ahead (accelerate prefetches one batch) leave theirs queued for the next step."""

    def __init__(self, pad_id: int | None) -> None:
        self.pad_id = pad_id
        self.queue: deque[tuple[int, int]] = deque()

    def wrap(self, collate: Callable) -> Callable:
        def counted(features):
            batch = collate(features)
            ids = batch["input_ids"]
            mask = batch.get("attention_mask") if hasattr(batch, "get") else None
            if mask is not None:
                nonpad = int(mask.sum())
            elif self.pad_id is not None:
                nonpad = int((ids != self.pad_id).sum())
            else:
                nonpad = ids.numel()
            self.queue.append((nonpad, ids.numel()))
            return batch

        return counted

    def take(self, n: int) -> tuple[int, int]:
        nonpad = padded = 0
        for _ in range(min(n, len(self.queue))):
            a, b = self.queue.popleft()
            nonpad, padded = nonpad + a, padded + b
        return nonpad, padded


class StepClock:
    """Times between optimizer-step ends, with the tokens of each step."""

    def __init__(self, meter: TokenMeter, micro_per_step: int, cuda: bool) -> None:
        self.meter, self.micro, self.cuda = meter, micro_per_step, cuda
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.padded: list[int] = []
        self.losses: list[float] = []
        self.started: float | None = None
        self._last = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def begin(self) -> None:
        self._sync()
        self.started = self._last = time.perf_counter()

    def step(self) -> None:
        self._sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now
        nonpad, padded = self.meter.take(self.micro)
        self.tokens.append(nonpad)
        self.padded.append(padded)


class MemoryProbe:
    """Peak memory of one run; see the module docstring for what each number means."""

    def __init__(self, cuda: bool, interval_s: float = 0.005) -> None:
        self.cuda, self.interval = cuda, interval_s
        self.result: dict = {}

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self._rss()
            if rss is not None and rss > self._peak:
                self._peak = rss
            self._stop.wait(self.interval)

    def __enter__(self):
        gc.collect()
        _malloc_trim()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self._base = self._rss()
        self._peak = self._base or 0
        self._stop = threading.Event()
        self._thread = None
        if self._base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            rss = self._rss()
            self._peak = max(self._peak, rss or 0)
            self.result["peak_rss_growth_mb"] = round((self._peak - self._base) / 2**20, 1)
        if self.cuda:
            import torch

            self.result["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            self.result["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)


def _malloc_trim() -> None:
    """Hand freed heap back to the OS (glibc), so the next run's RSS growth is its own."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _free_cuda(cuda: bool) -> None:
    gc.collect()
    _malloc_trim()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def _reset_accelerate_state() -> None:
    """HF Trainer and llmtune each make an Accelerator; start every run from a clean state."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except (ImportError, AttributeError):
        pass
