"""SIGTERM / SIGINT as a request to stop at the next step boundary (TPU pod / SLURM preemption, Ctrl-C).

The trainer then saves a checkpoint of the step it has reached and returns; ``train.py`` exits
with ``128 + signal`` and the same command resumes. With several processes, every step all-gathers
the local flags, so all hosts stop (and save) at the same step. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class StopSignals:
    """Context manager: installs the handlers (main thread only) and restores the previous ones."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        log.warning("received %s: saving a checkpoint at the end of this step, then stopping",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def requested(self) -> int | None:
        """The signal that asked to stop on any process (the same answer on every process), or None."""
        local = self.signum or 0
        if jax.process_count() > 1:
            local = int(np.max(multihost_utils.process_allgather(np.asarray(local, np.int32))))
        return local or None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""
