"""MLflow calls off the training loop: queued on a worker thread (:class:`TrackerThread`) or in a spawned tracker
process (:class:`TrackerProcess`, what the DAG's jobs use), in the order they were made; :class:`BackgroundTracker`
is one run's handle on such a worker."""
from __future__ import annotations

import queue
import threading
import time

from sim_core.files import atomic_write_json
from sim_core.tracking.client import MLflowTracker, TrackingError


def _execute(state: dict, key: str, op: str, args: tuple) -> None:
    """Run one queued tracking call of run ``key`` (on a worker thread, or in the tracker process). After a
    run's first error its later calls are skipped; the error is reported at that run's ``sync``."""
    trackers, errors, busy = state["trackers"], state["errors"], state["busy"]
    if errors.get(key) is not None:
        return
    t0 = time.perf_counter()
    try:
        if op == "create":
            trackers[key] = MLflowTracker(*args[0], **args[1])
        elif op == "write_done":  # done.json: written only once MLflow holds everything of the run
            path, record = args
            record["seconds"]["tracking_background"] = round(busy.get(key, 0.0) + time.perf_counter() - t0, 3)
            atomic_write_json(path, {**record, "run_id": trackers[key].run_id})
        else:
            getattr(trackers[key], op)(*args)
    except BaseException as e:  # noqa: BLE001 - reported to the job at close()
        errors[key] = e
    busy[key] = busy.get(key, 0.0) + time.perf_counter() - t0


def _new_state() -> dict:
    return {"trackers": {}, "errors": {}, "busy": {}}


class TrackerThread:
    """One worker thread that runs queued MLflow calls in order; the runs of a job share it, so one process
    never talks to the store from two threads at once. Cheap to start (tests, single runs); a job uses
    :class:`TrackerProcess`, which keeps MLflow off the training process's interpreter altogether."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.state = _new_state()
        self.thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            if callable(item):
                item()
            else:
                _execute(self.state, *item)

    def submit(self, key: str, op: str, *args) -> None:
        self.queue.put((key, op, args))

    def sync(self, key: str, timeout: float | None = None):
        """Wait until the calls of run ``key`` queued so far have run: (first error or None, busy seconds)."""
        done = threading.Event()
        self.queue.put(done.set)
        if not done.wait(timeout):
            raise TrackingError(f"MLflow calls still running after {timeout} s")
        return self.state["errors"].get(key), self.state["busy"].get(key, 0.0)

    def stop(self, timeout: float | None = None) -> None:
        self.queue.put(None)
        self.thread.join(timeout)


def _serve(requests, replies, parent_pid: int) -> None:
    """The tracker process: imports MLflow at once (while the job imports torch), then runs the calls it is
    sent, in order. It exits on ``None`` or when the job's process has gone."""
    import os
    try:
        import mlflow.tracking  # noqa: F401  (the ~2 s import, off the training process)
    except Exception:  # reported by the first call that needs it
        pass
    state = _new_state()
    while True:
        try:
            item = requests.get(timeout=2.0)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return
            continue
        if item is None:
            return
        key, op, args = item
        if op == "sync":
            err = state["errors"].get(key)
            if err is not None:
                try:
                    import pickle
                    pickle.dumps(err)
                except Exception:
                    err = TrackingError(f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
            replies.put((args[0], err, state["busy"].get(key, 0.0)))
        else:
            _execute(state, key, op, args)


class TrackerProcess:
    """MLflow calls in a separate (spawned) process, in the order they are submitted: the training process
    never imports MLflow, never opens the store and never shares its interpreter lock with tracking, so the
    job's first run trains at full speed (benchmarks/bench_harness_overhead.py). Same interface as
    :class:`TrackerThread`."""

    def __init__(self):
        import multiprocessing
        import os
        ctx = multiprocessing.get_context("spawn")  # not fork: the job's process may hold torch's threads
        self.requests, self.replies = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=_serve, args=(self.requests, self.replies, os.getpid()),
                                   name="mlflow-tracker", daemon=True)
        self.process.start()
        self._token = 0

    def submit(self, key: str, op: str, *args) -> None:
        self.requests.put((key, op, args))

    def sync(self, key: str, timeout: float | None = None):
        self._token += 1
        token = self._token
        self.requests.put((key, "sync", (token,)))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                got, err, busy = self.replies.get(timeout=remaining if remaining is not None else 5.0)
            except queue.Empty:
                if not self.process.is_alive():
                    code = self.process.exitcode
                    raise TrackingError(f"the MLflow tracker process died (exit code {code})") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TrackingError(f"MLflow calls still running after {timeout} s") from None
                continue
            if got == token:  # replies to earlier syncs that timed out are dropped
                return err, busy

    def stop(self, timeout: float | None = None) -> None:
        self.requests.put(None)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()


class BackgroundTracker:
    """The MLflowTracker of one run, its calls queued on a worker (:class:`TrackerThread` or
    :class:`TrackerProcess`) so that training never waits for MLflow: a job's first run would otherwise wait
    ~2 s for `import mlflow` and the store's schema check, and every checkpoint for a round trip to the store
    (benchmarks/bench_harness_overhead.py measures what is left).

    Calls return at once and run in order. ``write_done(path, record)`` queues writing the run's done.json
    behind them (once MLflow holds everything). ``close()`` waits for this run's calls and raises the first
    error one of them met (later calls of the run are then skipped). If the process dies before that, nothing
    that matters is lost: metrics.jsonl keeps every record and the MLflow run's ``synced_step`` tag says where
    a resumed run must continue."""

    _count = 0

    def __init__(self, *args, worker=None, **kwargs):
        self._own_worker = worker is None
        self._worker = worker or TrackerThread()
        BackgroundTracker._count += 1
        self.key = f"{BackgroundTracker._count}:{args[0] if args else kwargs.get('run_dir')}"
        self.busy_seconds = 0.0  # time this run's MLflow calls took on the worker, known after close()
        self._worker.submit(self.key, "create", args, kwargs)

    def log_records(self, records: list[dict], up_to_step: int, strict: bool = False) -> None:
        self._worker.submit(self.key, "log_records", list(records), up_to_step, strict)  # the caller clears its list

    def log_metrics(self, metrics: dict, step: int) -> None:
        self._worker.submit(self.key, "log_metrics", dict(metrics), step)

    def set_tags(self, **tags) -> None:
        self._worker.submit(self.key, "set_tags_dict", dict(tags))

    def log_artifacts(self, path) -> None:
        self._worker.submit(self.key, "log_artifacts", str(path))

    def finish(self, status: dict) -> None:
        self._worker.submit(self.key, "finish", dict(status))

    def write_done(self, path, record: dict) -> None:
        self._worker.submit(self.key, "write_done", str(path), record)

    def close(self, timeout: float | None = None) -> None:
        """Wait until this run's queued calls have run; raise the first error one of them met."""
        error, self.busy_seconds = self._worker.sync(self.key, timeout)
        if self._own_worker:
            self._worker.stop()
        if error is not None:
            raise error
