"""One process per run directory. The lock is an flock on ``run.lock``, held for the life of the process: the kernel
releases it when the process ends, however it ends (kill -9 included), so a stale lock is taken over by the next
process without any cleanup. The file records who holds it (PID, host, time), for the error a second process gets."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from sim_core.errors import RunDirError

LOCK_FILE = "run.lock"


class RunLock:
    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd = None

    def acquire(self) -> "RunLock":
        """Take the lock, or fail in one line naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirError(f"run directory {self.path.parent} is in use by PID {holder.get('pid', '?')} on "
                              f"{holder.get('host', '?')} since {holder.get('since', '?')}: wait for that run to end "
                              "or stop it") from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record + b"\n", 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the kernel drops the flock with the last descriptor
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def remove_temporaries(run_dir) -> list[Path]:
    """The half-written files a killed process left in its run directory (atomic writes go through ``.<name>.*.tmp``,
    pictures through ``.<stem>.*.png`` or ``*.tmp.png``); only call this while holding the run's lock."""
    run_dir = Path(run_dir)
    found = [p for pattern in (".*.tmp", ".*.png", "*.tmp.png") for p in run_dir.rglob(pattern) if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return found
