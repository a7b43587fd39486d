"""SIGTERM/SIGINT during training: finish the step, write a checkpoint, stop.

A second signal while stopping is noted and ignored, so a double Ctrl-C or a scheduler's
repeated SIGTERM does not start a second save or kill the first one half-way.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("llmtune")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager: while active, the signals set `signum` instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
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
            log.warning("%s again: already stopping; the checkpoint is being written", name)
            return
        self.signum = signum
        log.warning("%s: finishing this step, writing a checkpoint, then stopping", name)
