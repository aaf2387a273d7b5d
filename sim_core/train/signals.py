"""Stopping on a signal: SIGTERM (scancel, scontrol requeue, preemption), SIGUSR1 and SIGUSR2 (SLURM's warning
before the time limit, submitit's preemption notice) and SIGINT (Ctrl-C) are remembered, not acted on; the loop
finishes its iteration, checkpoints and returns "interrupted". A second Ctrl-C stops at once (KeyboardInterrupt)."""
from __future__ import annotations

import signal

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class StopSignals:
    """While active, the handled signals set ``received`` (the last one's number) instead of ending the process;
    the previous handlers come back on exit. Entered once per process (the start-up, the initial evaluation and the
    loop all run under it); nested entries share the outer one."""

    _active: "StopSignals | None" = None

    def __init__(self):
        self.received = None
        self._old = {}
        self._outer = None

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait for the checkpoint
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if StopSignals._active is not None:  # already watching: share its record
            self._outer = StopSignals._active
            return self._outer
        self._old = {s: signal.signal(s, self._handle) for s in HANDLED_SIGNALS}
        StopSignals._active = self
        return self

    def __exit__(self, *exc) -> None:
        if self._outer is not None:
            return
        StopSignals._active = None
        for s, h in self._old.items():
            signal.signal(s, h)

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "signal on another rank"
