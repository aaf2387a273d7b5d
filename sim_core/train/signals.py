"""Stopping on a signal: SIGTERM (scancel, scontrol requeue, preemption), SIGUSR1 and SIGUSR2 (SLURM's warning
before the time limit, submitit's preemption notice) are remembered, not acted on; the loop finishes its iteration,
checkpoints and returns "interrupted"."""
from __future__ import annotations

import signal

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """While active, the handled signals set ``received`` (the last one's number) instead of ending the process;
    the previous handlers come back on exit."""

    def __init__(self):
        self.received = None
        self._old = {}

    def _handle(self, signum, frame):
        self.received = signum

    def __enter__(self) -> "StopSignals":
        self._old = {s: signal.signal(s, self._handle) for s in HANDLED_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "signal on another rank"
