"""SIGTERM/SIGINT: finish the step (or the evaluation batch), checkpoint, stop.

A second signal while stopping is noted and ignored, so a double Ctrl-C or a scheduler's
repeated SIGTERM does not start a second save or kill the first one half-way. The loop keeps
`plan` up to date (training, evaluating, saving): both messages say what the run is doing.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger("llmtune")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
TRAINING_PLAN = "finishing this step, writing a checkpoint, then stopping"


class EvaluationStopped(Exception):
    """Raised between evaluation batches once a stop signal has arrived; the loop catches it
    and stops the run as a signal during training does."""

    def __init__(self, signum: int, batches_done: int, batches: int) -> None:
        super().__init__(f"evaluation stopped by signal {signum} after {batches_done} of {batches} batches")
        self.signum, self.batches_done, self.batches = signum, batches_done, batches


class StopBetweenBatches:
    """An evaluation loader that asks `agreed_signal()` before each batch and raises
    EvaluationStopped once it returns a signal number. With several processes the answer must
    be the same on all of them (the loop agrees on it with a collective), or they would stop at
    different batches and wait for each other for ever."""

    def __init__(self, loader, agreed_signal: Callable[[], int]) -> None:
        self.loader, self.agreed_signal = loader, agreed_signal

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for done, batch in enumerate(self.loader):
            signum = self.agreed_signal()
            if signum:
                raise EvaluationStopped(signum, done, len(self.loader))
            yield batch


class StopRequest:
    """Context manager: while active, the signals set `signum` instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.plan = TRAINING_PLAN  # what the run does when a signal arrives now (set by the loop)
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            log.warning("%s again: already stopping (%s); this signal is ignored", name, self.plan)
            return
        self.signum = signum
        log.warning("%s: %s", name, self.plan)
